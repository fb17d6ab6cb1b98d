//! Prometheus metrics (placeholder with the final API; the recorder and
//! `/metrics` endpoint land with the diagnostics work).

/// Counts an upstream call by outcome.
pub fn upstream_call(_integration: &str, _operation: &str, _outcome: &str, _seconds: f64) {}
/// Counts a retried upstream call.
pub fn upstream_retry(_integration: &str, _operation: &str) {}
/// Counts a throttled call by reason.
pub fn throttled(_integration: &str, _reason: &str) {}
/// Sets the breaker state gauge.
pub fn breaker_state(_integration: &str, _state: &str) {}
/// Counts a breaker transition.
pub fn breaker_transition(_integration: &str, _from: &str, _to: &str) {}
/// Counts a fallback answer.
pub fn fallback_used(_integration: &str, _operation: &str) {}
/// Counts a delivery attempt by outcome.
pub fn delivery_attempt(_outcome: &str, _seconds: f64) {}
