//! The push stream: command and callback status changes as Server-Sent Events
//! (WHATWG HTML, "Server-sent events"), served from the durable event log
//! ([`crate::query::event_log`]).
//!
//! - `GET /v1/events`: a client's own commands; readers and admins see every
//!   client's (optionally `?client_id=`). Without a `Last-Event-ID` it starts
//!   at "now": after the newest event finished when the request arrived.
//! - `GET /v1/commands/{id}/events`: one command (same read rule as its status
//!   document, 404 otherwise), from its first event.
//!
//! Each event is `id: <xid>-<id>`, `event: <type>`, `data: <one-line JSON>`.
//! A reconnect with `Last-Event-ID` (or `?last_event_id=` for clients that
//! cannot set headers) continues right after that event: no gaps, no
//! duplicates. The stream starts with a `retry:` hint and sends a comment line
//! every `events.keep_alive_s` while idle. Streams end when the process shuts
//! down (clients reconnect and resume).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use tokio::sync::mpsc;
use utoipa::IntoParams;

use crate::auth::Principal;
use crate::config::Settings;
use crate::db::{ReadPool, WritePool};
use crate::http::error::ApiError;
use crate::http::state::Shared;
use crate::query::event_log::{Cursor, Event, EventFeed, EventFilter};

/// The `Last-Event-ID` request header (WHATWG HTML, server-sent events).
pub const LAST_EVENT_ID: &str = "Last-Event-ID";

/// Query parameters of `GET /v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Readers and admins: only this client's commands. A client may only
    /// name itself (another client: 403).
    pub client_id: Option<String>,
    /// Resume after this event id, like the `Last-Event-ID` header (which
    /// wins when both are sent); `0-0` = from the oldest event kept.
    pub last_event_id: Option<String>,
}

/// Query parameters of `GET /v1/commands/{id}/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CommandEventsParams {
    /// Resume after this event id, like the `Last-Event-ID` header (which
    /// wins when both are sent).
    pub last_event_id: Option<String>,
}

/// Where a stream resumes: the `Last-Event-ID` header, else the query
/// parameter; `None` when neither is sent.
fn resume_point(req: &HttpRequest, param: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    if let Some(h) = req.headers().get(LAST_EVENT_ID) {
        let raw = h
            .to_str()
            .map_err(|_| ApiError::validation(LAST_EVENT_ID, "must be ASCII"))?;
        if !raw.trim().is_empty() {
            return raw
                .parse::<Cursor>()
                .map(Some)
                .map_err(|e| ApiError::validation(LAST_EVENT_ID, e.to_string()));
        }
    }
    param
        .map(|raw| {
            raw.parse::<Cursor>()
                .map_err(|e| ApiError::validation("last_event_id", e.to_string()))
        })
        .transpose()
}

/// Stream the caller's command and callback status changes (SSE).
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(EventsParams,
           ("Last-Event-ID" = Option<String>, Header, description = "Resume right after this event id (`<xid>-<id>`)")),
    responses(
        (status = 200, description = "An endless `text/event-stream`: `id: <xid>-<id>`, `event: <type>` (command.accepted, command.in_progress, command.succeeded, command.failed, callback.delivered, callback.dead_lettered, callback.replayed), `data: <JSON>` with command_id, client_id, type, status, integration, operation, occurred_at (+ status_code, callback)", content_type = "text/event-stream", body = String),
        (status = 401, description = "No or invalid token", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another client's events (`client_id` of a client token), or a token with none of the roles client, reader, admin", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad `Last-Event-ID` / `last_event_id` / `client_id`", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many open streams (`events.max_streams`), or the database is unavailable", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(name = "event_stream", target = "hookrelay::query", skip_all)]
pub async fn stream_events(
    principal: Principal,
    params: web::Query<EventsParams>,
    req: HttpRequest,
    feed: Shared<EventFeed>,
    settings: Shared<Arc<Settings>>,
) -> Result<HttpResponse, ApiError> {
    crate::http::body::reject_nul_param("client_id", params.client_id.as_deref())?;
    let client_id = if principal.reads_all() {
        params.client_id.clone()
    } else {
        match params.client_id.as_deref() {
            Some(c) if c != principal.client_id => {
                return Err(ApiError::Forbidden(
                    "a client may only stream its own events".into(),
                ))
            }
            _ => Some(principal.client_id.clone()),
        }
    };
    let from = resume_point(&req, params.last_event_id.as_deref())?;
    let filter = EventFilter {
        client_id,
        command_id: None,
    };
    // "Now": after the newest finished event in the log (read, not the
    // tailer's position, which is the start of the log until its first read).
    let from = match from {
        Some(c) => c,
        None => crate::query::event_log::head(feed.pool()).await?,
    };
    open_stream(&feed, &settings, from, filter)
}

/// Stream one command's status changes (SSE), from its first event.
#[utoipa::path(
    get, path = "/v1/commands/{id}/events", tag = "events",
    params(("id" = uuid::Uuid, Path, description = "Command id"), CommandEventsParams,
           ("Last-Event-ID" = Option<String>, Header, description = "Resume right after this event id (`<xid>-<id>`)")),
    responses(
        (status = 200, description = "An endless `text/event-stream` of this command's events, oldest first (same format as `/v1/events`)", content_type = "text/event-stream", body = String),
        (status = 401, description = "No or invalid token", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token has none of the roles client, reader, admin", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such command, not yours, or an id that is not a UUID", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad `Last-Event-ID` / `last_event_id`", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many open streams (`events.max_streams`), or the database is unavailable", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(name = "command_event_stream", target = "hookrelay::query", skip_all, fields(command_id = %path))]
#[allow(clippy::too_many_arguments)] // actix extractors, one per argument
pub async fn stream_command_events(
    principal: Principal,
    path: web::Path<String>,
    params: web::Query<CommandEventsParams>,
    req: HttpRequest,
    read: Shared<ReadPool>,
    write: Shared<WritePool>,
    state: Shared<Arc<super::QueryState>>,
    feed: Shared<EventFeed>,
    settings: Shared<Arc<Settings>>,
) -> Result<HttpResponse, ApiError> {
    let id = super::parse_id(&path)?;
    // Read-your-writes, as for the status document: a client that just sent
    // the command may open its stream before the replica has the row.
    super::visible_command(state.pool(&principal, &read, &write), &principal, id).await?;
    let from = resume_point(&req, params.last_event_id.as_deref())?.unwrap_or(Cursor::START);
    let filter = EventFilter {
        client_id: None,
        command_id: Some(id),
    };
    open_stream(&feed, &settings, from, filter)
}

/// One SSE event, per the WHATWG format (the data is one line of JSON).
fn frame(event: &Event) -> web::Bytes {
    web::Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        event.cursor, event.kind, event.data
    ))
}

fn open_stream(
    feed: &EventFeed,
    settings: &Settings,
    from: Cursor,
    filter: EventFilter,
) -> Result<HttpResponse, ApiError> {
    let slot = feed
        .stream_slot()
        .ok_or_else(|| ApiError::Unavailable("too many open event streams; retry later".into()))?;
    let keep_alive = Duration::from_secs(settings.events.keep_alive_s);
    let (events_tx, mut events_rx) = mpsc::channel::<Arc<Event>>(256);
    let (bytes_tx, bytes_rx) = mpsc::channel::<web::Bytes>(16);
    let follower = feed.clone();
    let follow_filter = filter.clone();
    // Reads the log and the live feed into `events_tx`.
    let follow = tokio::spawn(async move {
        if let Err(e) = follower.follow(from, &follow_filter, &events_tx).await {
            tracing::warn!(target: "hookrelay::query", error = %e, "event stream ended: reading the event log failed");
        }
    });
    // Frames events, adds keep-alives, ends with the client or the process.
    let cancel = feed.cancelled();
    let retry = settings.events.retry_ms;
    tokio::spawn(async move {
        let hello = format!("retry: {retry}\n: hookrelay event stream\n\n");
        if bytes_tx.send(web::Bytes::from(hello)).await.is_err() {
            follow.abort();
            return;
        }
        loop {
            let next = tokio::select! {
                e = events_rx.recv() => e.map(|e| frame(&e)),
                () = tokio::time::sleep(keep_alive) => Some(web::Bytes::from_static(b": keep-alive\n\n")),
                () = bytes_tx.closed() => None,
                () = cancel.cancelled() => None,
            };
            let Some(bytes) = next else { break };
            // A client that reads slowly leaves this send waiting; shutdown
            // must still end the stream at once.
            let sent = tokio::select! {
                sent = bytes_tx.send(bytes) => sent.is_ok(),
                () = cancel.cancelled() => false,
            };
            if !sent {
                break;
            }
        }
        follow.abort();
    });
    // The slot lives in the response body: actix drops the body as soon as
    // the connection ends (the server does not keep half-closed connections,
    // see `startup::http_server`), which frees the slot at once — not at the
    // next keep-alive write — and closes `bytes_rx`, ending the task above.
    let body = futures_util::stream::unfold((bytes_rx, slot), |(mut rx, slot)| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), (rx, slot)))
    });
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}
