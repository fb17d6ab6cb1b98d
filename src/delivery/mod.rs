//! Webhook delivery: the Standard Webhooks signer, the retry schedule and the
//! sender that performs one attempt.
//!
//! Signing follows the Standard Webhooks specification
//! (<https://www.standardwebhooks.com/>, "Signature scheme"): the signed
//! content is `{webhook-id}.{webhook-timestamp}.{body}`, HMAC-SHA256 keyed with
//! the base64-decoded part of the `whsec_` secret, sent as
//! `webhook-signature: v1,<base64>`; several signatures (during a secret
//! rotation) are space-separated. Each client's signing secrets are stored,
//! created and rotated in [`secrets`].

pub mod secrets;

pub mod dead_letters;
pub mod host_limits;

use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngExt;
use serde::Serialize;
use sha2::Sha256;
use uuid::Uuid;

use crate::config::DeliverySettings;
use crate::domain::CallbackUrl;
use crate::http::body::{describe_transport_error, lossy_text, read_body_limited, retry_after_of};
use crate::integration::UpstreamResult;
use crate::security::SECRET_PREFIX;

/// Header carrying the delivery id (stable across retries and replays).
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the attempt's Unix timestamp, seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the `v1,` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// The webhook body (`docs/reference.md`, "The webhook").
#[derive(Debug, Serialize)]
pub struct WebhookBody<'a> {
    /// `command.succeeded` or `command.failed`.
    #[serde(rename = "type")]
    pub type_: &'a str,
    /// When the event happened (RFC 3339).
    pub timestamp: chrono::DateTime<chrono::Utc>,
    /// The event data.
    pub data: WebhookData<'a>,
}

/// `data` of the webhook body.
#[derive(Debug, Serialize)]
pub struct WebhookData<'a> {
    /// The command.
    pub command_id: Uuid,
    /// Integration name.
    pub integration: &'a str,
    /// Operation name.
    pub operation: &'a str,
    /// `succeeded` or `failed`.
    pub status: &'a str,
    /// The upstream result.
    pub result: &'a UpstreamResult,
}

/// Signs `body` for one attempt with every active secret.
///
/// Returns the `webhook-signature` header value. Secrets that are not valid
/// `whsec_`/base64 are skipped (they cannot exist: we generate them).
pub fn sign(secrets: &[String], webhook_id: &str, timestamp: i64, body: &str) -> String {
    let mut out = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        let Ok(key) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            continue;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            continue;
        };
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        out.push(format!("v1,{sig}"));
    }
    out.join(" ")
}

/// The delay before the next attempt after attempt number `attempt` (1-based,
/// within this delivery run) failed, or `None` when the schedule is exhausted.
///
/// `schedule[attempt-1]` seconds with ±`jitter` applied; a receiver's
/// `Retry-After` (capped at `max_retry_after`) raises the delay, never lowers it.
///
/// Not `backon`: the documented schedule is an explicit list
/// (`delivery.retry_schedule_s`), not a formula, and its jitter is symmetric
/// (±`jitter`), while `backon` only has formula schedules (constant,
/// exponential, Fibonacci) whose jitter only adds (`[d, 2d)`).
pub fn next_delay(
    schedule: &[f64],
    jitter: f64,
    attempt: u32,
    retry_after: Option<Duration>,
    max_retry_after: Duration,
) -> Option<Duration> {
    let base = *schedule.get(usize::try_from(attempt).ok()?.checked_sub(1)?)?;
    let factor = if jitter > 0.0 {
        rand::rng().random_range(1.0 - jitter..=1.0 + jitter)
    } else {
        1.0
    };
    let delay = Duration::from_secs_f64((base * factor).max(0.0));
    Some(match retry_after {
        Some(ra) => delay.max(ra.min(max_retry_after)),
        None => delay,
    })
}

/// How one attempt ended.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// When the attempt started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Wall time of the attempt, ms.
    pub duration_ms: i32,
    /// Receiver's status; `None` on a network error.
    pub response_status: Option<u16>,
    /// First `response_body_limit_bytes` of the receiver's body.
    pub response_body: Option<String>,
    /// Why it failed; `None` on 2xx.
    pub error: Option<String>,
    /// The receiver's `Retry-After` on 429/503.
    pub retry_after: Option<Duration>,
}

impl AttemptOutcome {
    /// An attempt that failed before anything was sent (e.g. no usable signing
    /// secret): no response, `error` explains, counted like a network error.
    pub fn not_sent(error: impl Into<String>) -> Self {
        AttemptOutcome {
            started_at: chrono::Utc::now(),
            duration_ms: 0,
            response_status: None,
            response_body: None,
            error: Some(error.into()),
            retry_after: None,
        }
    }

    /// 2xx.
    pub fn delivered(&self) -> bool {
        matches!(self.response_status, Some(200..=299))
    }

    /// 410 Gone: the receiver asks us to stop.
    pub fn gone(&self) -> bool {
        self.response_status == Some(410)
    }
}

/// Sends webhooks: one keep-alive pool, redirects not followed (a 3xx is a
/// failed attempt), no system proxy, `delivery.timeout_ms` per attempt, and
/// the SSRF guard: names resolve through [`crate::security::GuardedResolver`]
/// and literal addresses are checked before sending.
pub struct Sender {
    client: reqwest::Client,
    body_limit: usize,
    policy: std::sync::Arc<crate::security::CallbackPolicy>,
}

impl Sender {
    /// Builds the HTTP client from `[delivery]`, guarded by `policy`.
    ///
    /// # Errors
    /// If the TLS backend cannot initialise.
    pub fn new(
        settings: &DeliverySettings,
        policy: crate::security::CallbackPolicy,
    ) -> anyhow::Result<Self> {
        let policy = std::sync::Arc::new(policy);
        let client = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(crate::security::GuardedResolver {
                policy: policy.clone(),
            }))
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.timeout_ms.min(5_000)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(settings.user_agent.clone())
            .build()?;
        Ok(Sender {
            client,
            body_limit: settings.response_body_limit_bytes,
            policy,
        })
    }

    /// Performs one signed attempt to `url` (a stored URL as the claim decoded
    /// it; the callback policy is checked again here, as it may have changed
    /// since intake). Never returns an error: every failure is described in
    /// the outcome.
    pub async fn attempt(
        &self,
        url: &CallbackUrl,
        webhook_id: &str,
        secrets: &[String],
        payload: &str,
    ) -> AttemptOutcome {
        if let Err(why) = crate::security::check_literal_host(url.as_str(), &self.policy) {
            return AttemptOutcome::not_sent(why);
        }
        let started_at = chrono::Utc::now();
        let timestamp = started_at.timestamp();
        let signature = sign(secrets, webhook_id, timestamp, payload);
        let clock = Instant::now();
        let sent = self
            .client
            .post(url.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_ID, webhook_id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(payload.to_owned())
            .send()
            .await;
        let (response_status, response_body, error, retry_after) = match sent {
            Err(e) => (None, None, Some(describe_transport_error(&e)), None),
            Ok(resp) => {
                let status = resp.status().as_u16();
                // Only 429 and 503 carry a Retry-After we honour
                // (`docs/reference.md`, "The webhook").
                let retry_after = matches!(status, 429 | 503)
                    .then(|| retry_after_of(&resp))
                    .flatten();
                let body = match read_body_limited(resp, self.body_limit).await {
                    Ok((bytes, _)) if !bytes.is_empty() => Some(lossy_text(&bytes)),
                    _ => None,
                };
                let error = match status {
                    200..=299 => None,
                    300..=399 => Some(format!("HTTP {status} (redirects are not followed)")),
                    _ => Some(format!("HTTP {status}")),
                };
                (Some(status), body, error, retry_after)
            }
        };
        AttemptOutcome {
            started_at,
            duration_ms: i32::try_from(clock.elapsed().as_millis()).unwrap_or(i32::MAX),
            response_status,
            response_body,
            error,
            retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test vector from the Standard Webhooks reference implementations.
    #[test]
    fn signature_matches_reference_vector() {
        let sig = sign(
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn reference_verifier_accepts_our_signature() {
        let secret = crate::security::new_signing_secret();
        let now = chrono::Utc::now().timestamp();
        let body = r#"{"type":"command.succeeded","data":{"ü":1}}"#;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(HEADER_ID, "0192-id".parse().expect("hv"));
        headers.insert(HEADER_TIMESTAMP, now.to_string().parse().expect("hv"));
        let other = crate::security::new_signing_secret();
        let sig = sign(&[other, secret.clone()], "0192-id", now, body);
        headers.insert(HEADER_SIGNATURE, sig.parse().expect("hv"));
        standardwebhooks::Webhook::new(&secret)
            .expect("secret")
            .verify(body.as_bytes(), &headers)
            .expect("reference verifier accepts");
    }

    #[test]
    fn two_secrets_give_two_signatures() {
        let sig = sign(
            &[
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
                "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
            ],
            "id",
            1,
            "{}",
        );
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
    }

    #[test]
    fn schedule_with_jitter_stays_in_bounds() {
        let schedule = [10.0, 60.0];
        let cap = Duration::from_secs(3600);
        for _ in 0..200 {
            let d = next_delay(&schedule, 0.2, 1, None, cap).expect("delay");
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
            let d = next_delay(&schedule, 0.2, 2, None, cap).expect("delay");
            assert!(
                d >= Duration::from_secs(48) && d <= Duration::from_secs(72),
                "{d:?}"
            );
        }
        assert_eq!(next_delay(&schedule, 0.2, 3, None, cap), None);
        assert_eq!(next_delay(&schedule, 0.2, 0, None, cap), None);
    }

    #[test]
    fn retry_after_raises_the_delay_up_to_the_cap() {
        let cap = Duration::from_secs(100);
        let d = next_delay(&[1.0], 0.0, 1, Some(Duration::from_secs(30)), cap);
        assert_eq!(d, Some(Duration::from_secs(30)));
        let d = next_delay(&[1.0], 0.0, 1, Some(Duration::from_secs(9999)), cap);
        assert_eq!(d, Some(cap));
        let d = next_delay(&[50.0], 0.0, 1, Some(Duration::from_secs(1)), cap);
        assert_eq!(d, Some(Duration::from_secs(50)));
    }
}
