//! `[server]`: listeners, worker threads and connection limits.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Listen address `host:port`; port 0 picks a free port (tests).
    pub bind: String,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// Largest request body, bytes; beyond it 413.
    pub body_limit_bytes: usize,
    /// Grace for in-flight HTTP requests on shutdown, seconds.
    pub shutdown_timeout_s: u64,
    /// Separate listen address (`host:port`) for `/metrics`, `/v1/admin/*` and
    /// the dead-letter routes; when set they are served only there, not on
    /// `bind`. Empty = off (everything on `bind`). Also served by
    /// `serve --role worker`.
    pub admin_bind: String,
    /// Time a client has to send the request line and headers, ms; after it
    /// the connection is answered 408 and closed (slowloris). 0 = no limit.
    pub client_request_timeout_ms: u64,
    /// Time a client has to acknowledge the connection shutdown, ms. 0 = none.
    pub client_disconnect_timeout_ms: u64,
    /// Idle time before a keep-alive connection is closed, seconds; 0 = keep-alive off.
    pub keep_alive_s: u64,
    /// Most concurrent connections per HTTP worker; beyond it new connections wait.
    pub max_connections: usize,
    /// Largest total size of the request headers (names + values), bytes; beyond it 431.
    pub max_header_bytes: usize,
}

impl ServerSettings {
    /// Checks the listen addresses and the connection limits.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        self.bind.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "server.bind",
                "must be an IP address and port, e.g. 127.0.0.1:8080 (not a host name)",
            )
        })?;
        if self.body_limit_bytes < 1024 {
            return Err(invalid("server.body_limit_bytes", "must be at least 1024"));
        }
        if !self.admin_bind.is_empty() {
            let admin = self.admin_bind.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "server.admin_bind",
                    "must be empty (off) or an IP address and port, e.g. 127.0.0.1:9090",
                )
            })?;
            if admin.port() != 0 && self.bind.parse::<SocketAddr>().ok() == Some(admin) {
                return Err(invalid("server.admin_bind", "must differ from server.bind"));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if self.max_header_bytes < 1024 {
            return Err(invalid("server.max_header_bytes", "must be at least 1024"));
        }
        Ok(())
    }
}
