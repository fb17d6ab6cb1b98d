//! Time values the API accepts: what Postgres can store.

/// Whether Postgres can store `t` and it is a plausible API time: years 1 to
/// 9999. chrono also reads signed years (`-5000-01-01T00:00:00Z`) and
/// microsecond counts far outside that, which Postgres refuses (SQLSTATE
/// 22008) — a 422 for the caller, not a database error.
pub fn storable_time(t: &chrono::DateTime<chrono::Utc>) -> bool {
    (1..=9999).contains(&chrono::Datelike::year(t))
}
