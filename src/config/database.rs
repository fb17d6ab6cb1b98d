//! `[database]`: the primary and read-replica Postgres pools.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::{invalid, ConfigError};

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Primary database URL (may hold a password, hence secret).
    pub url: SecretString,
    /// Read replica URL for the query side; empty = use `url`.
    pub read_url: SecretString,
    /// Primary pool size.
    pub max_connections: u32,
    /// Read pool size (only used with `read_url`).
    pub read_max_connections: u32,
    /// Pool acquire timeout, ms; a timeout answers 503.
    pub acquire_timeout_ms: u64,
    /// `serve` creates the database when missing.
    pub create_if_missing: bool,
    /// `serve` runs migrations at start.
    pub migrate_on_start: bool,
}

impl DatabaseSettings {
    /// Checks the URLs (`postgres://`) and the pool size.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        check_pg_url("database.url", self.url.expose_secret())?;
        if !self.read_url.expose_secret().is_empty() {
            check_pg_url("database.read_url", self.read_url.expose_secret())?;
        }
        if self.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        Ok(())
    }
}

fn check_pg_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let parsed = Url::parse(url).map_err(|e| invalid(key, format!("is not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(invalid(key, "must start with postgres://"));
    }
    Ok(())
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn mask_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable URL>".to_owned(),
    }
}
