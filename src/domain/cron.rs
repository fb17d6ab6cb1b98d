//! Cron expressions (maintenance schedules), parsed once when
//! configuration loads.

use std::str::FromStr;

/// Parses a cron expression (seconds minutes hours day-of-month month
/// day-of-week \[year\], as the `cron` crate reads it; times are UTC).
///
/// # Errors
/// The parser's message.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(expr).map_err(|e| e.to_string())
}
