//! Sealed outbox jobs: a MAC over what a job will act on, computed when the
//! work is enqueued and verified by the dispatcher before it acts.
//!
//! A job row only points at the rows it acts on (`commands`, `deliveries`), so
//! the seal is stored on those rows and covers exactly what the job reads:
//!
//! - **execute** (`commands.seal`): kind, command id, client, integration,
//!   operation, method, path, params, body, callback URL, idempotency key.
//!   Written at intake; cleared when the command finishes, so no execute job
//!   can verify against a finished command.
//! - **deliver** (`deliveries.seal`): kind, delivery id, command id, client,
//!   callback URL, payload. Written with the delivery and kept, so a replay
//!   (a new job pointing at the same row) verifies without re-sealing.
//!
//! The MAC is HMAC-SHA256 (RFC 2104) keyed with a key of
//! `security.job_mac_keys`; the stored form is `{key_id}:{base64(mac)}`. The
//! first key seals, every configured key verifies, so keys rotate by
//! prepending a new one. The input is a canonical, length-prefixed encoding
//! (never string concatenation): a domain label, then each field as an 8-byte
//! big-endian length and its bytes. `params` and `body` are covered as the
//! exact JSON text stored (`text` columns, see [`crate::domain::JsonText`]), so
//! a seal fails only when a byte of the row changed — never because a number
//! was parsed differently on the way back.
//!
//! Seals written before JSON was kept as text (label `v1`) covered a parsed
//! JSON tree; a row whose `v2` seal does not match is checked against that
//! encoding too, so commands in flight across the upgrade still run.

use std::fmt;

use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::zeroize::Zeroizing;
use secrecy::SecretString;
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

use crate::security::{KeyConfigError, MAX_KEY_ID_LEN};

pub use crate::domain::MAC_KEY_BYTES;

/// Domain label in front of every MAC input, so a MAC made for another
/// purpose under the same key cannot pass for a job seal.
const LABEL: &[u8] = b"hookrelay/job-seal/v2\0";

/// The label of seals written before JSON was kept as text (verify only).
const LEGACY_LABEL: &[u8] = b"hookrelay/job-seal/v1\0";

/// What an execute job acts on (fields of its `commands` row).
#[derive(Debug, Clone, Copy)]
pub struct ExecuteSeal<'a> {
    /// Command id.
    pub command_id: Uuid,
    /// Owner.
    pub client_id: &'a str,
    /// Integration name.
    pub integration: &'a str,
    /// Operation name.
    pub operation: &'a str,
    /// Resolved method.
    pub method: &'a str,
    /// Resolved path.
    pub path: &'a str,
    /// Params, the stored JSON text.
    pub params: &'a str,
    /// Body, the stored JSON text (absent = `None`).
    pub body: Option<&'a str>,
    /// Callback URL.
    pub callback_url: &'a str,
    /// Client's idempotency key (forwarded upstream).
    pub idempotency_key: Option<&'a str>,
}

/// What a deliver job acts on (fields of its `deliveries` row).
#[derive(Debug, Clone, Copy)]
pub struct DeliverSeal<'a> {
    /// Delivery id (the `webhook-id`).
    pub delivery_id: Uuid,
    /// Command id.
    pub command_id: Uuid,
    /// Owner (whose signing secrets sign the webhook).
    pub client_id: &'a str,
    /// Callback URL.
    pub url: &'a str,
    /// The exact body every attempt signs and sends.
    pub payload: &'a str,
}

/// Why a seal does not verify. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The row carries no seal (written before sealing, or tampered).
    #[error("the row is not sealed")]
    Missing,
    /// Not `{key_id}:{base64}` of a 32-byte MAC.
    #[error("the seal is malformed")]
    Malformed,
    /// Sealed with a key id that is not configured.
    #[error("sealed with key id `{0}`, which is not in security.job_mac_keys")]
    UnknownKey(String),
    /// The MAC does not match: the row (or the seal) was altered.
    #[error("the seal does not match the row (altered after it was sealed)")]
    Mismatch,
}

/// Seals and verifies outbox jobs (see the module docs). Built once from
/// `security.job_mac_keys`, shared by intake and the dispatcher.
pub struct JobSealer {
    /// `(key id, key)`, in configuration order; the first seals.
    keys: Vec<(String, Zeroizing<Vec<u8>>)>,
}

impl fmt::Debug for JobSealer {
    /// Key ids only, never key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobSealer")
            .field(
                "key_ids",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl JobSealer {
    /// Parses `id:base64` entries (`security.job_mac_keys`): ids of 1 to 32
    /// ASCII letters, digits, `.`, `_` or `-`, unique; keys of exactly 32
    /// bytes in standard base64.
    ///
    /// # Errors
    /// [`KeyConfigError`] for the first bad entry (1-based), without key material.
    pub fn from_keys(entries: &[SecretString]) -> Result<JobSealer, KeyConfigError> {
        let keys = crate::security::parse_keys(entries, MAC_KEY_BYTES)?;
        Ok(JobSealer { keys })
    }

    /// The sealer of an already parsed key ring (`security.job_keys`, built
    /// when configuration is loaded).
    pub fn from_ring(ring: &crate::domain::KeyRing) -> JobSealer {
        JobSealer {
            keys: ring.entries().to_vec(),
        }
    }

    /// Configured key ids, the sealing one first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// The seal of an execute job's command, with the first key.
    pub fn seal_execute(&self, fields: &ExecuteSeal<'_>) -> String {
        self.seal(&encode_execute(fields))
    }

    /// The seal of a deliver job's delivery, with the first key.
    pub fn seal_deliver(&self, fields: &DeliverSeal<'_>) -> String {
        self.seal(&encode_deliver(fields))
    }

    /// Verifies `seal` (as stored; `None` = unsealed) over an execute job's fields.
    ///
    /// # Errors
    /// [`SealError`]: missing, malformed, unknown key, or mismatch.
    pub fn verify_execute(
        &self,
        seal: Option<&str>,
        fields: &ExecuteSeal<'_>,
    ) -> Result<(), SealError> {
        match self.verify(seal, &encode_execute(fields)) {
            Err(SealError::Mismatch) => match encode_execute_legacy(fields) {
                Some(legacy) if self.verify(seal, &legacy).is_ok() => Ok(()),
                _ => Err(SealError::Mismatch),
            },
            other => other,
        }
    }

    /// Verifies `seal` over a deliver job's fields.
    ///
    /// # Errors
    /// [`SealError`]: missing, malformed, unknown key, or mismatch.
    pub fn verify_deliver(
        &self,
        seal: Option<&str>,
        fields: &DeliverSeal<'_>,
    ) -> Result<(), SealError> {
        self.verify(seal, &encode_deliver(fields))
    }

    fn seal(&self, input: &[u8]) -> String {
        // `from_keys` refuses an empty list, so there is always a first key.
        let Some((id, key)) = self.keys.first() else {
            return String::new();
        };
        let tag = mac(key, input).finalize().into_bytes();
        format!(
            "{id}:{}",
            base64::engine::general_purpose::STANDARD.encode(tag)
        )
    }

    fn verify(&self, seal: Option<&str>, input: &[u8]) -> Result<(), SealError> {
        let seal = seal.ok_or(SealError::Missing)?;
        let (id, encoded) = seal.split_once(':').ok_or(SealError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, key)| key)
            .ok_or_else(|| SealError::UnknownKey(id.chars().take(MAX_KEY_ID_LEN).collect()))?;
        let tag = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| SealError::Malformed)?;
        if tag.len() != 32 {
            return Err(SealError::Malformed);
        }
        // Constant-time comparison (hmac's `verify_slice`).
        mac(key, input)
            .verify_slice(&tag)
            .map_err(|_| SealError::Mismatch)
    }
}

/// What [`reseal_jobs`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResealJobsReport {
    /// Rows (commands and deliveries) re-sealed with the first key.
    pub resealed: u64,
    /// Rows whose seal does not verify (altered, or its key is not
    /// configured): logged at error and left as they are, so their jobs are
    /// still quarantined. Never re-sealed: that would launder an edited row.
    pub unverified: u64,
}

#[derive(sqlx::FromRow)]
struct CommandRow {
    id: Uuid,
    client_id: String,
    integration: String,
    operation: String,
    method: String,
    path: String,
    params: String,
    body: Option<String>,
    callback_url: String,
    idempotency_key: Option<String>,
    seal: String,
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: Uuid,
    command_id: Uuid,
    client_id: String,
    url: String,
    payload: String,
    seal: String,
}

/// Re-seals, with the first key of `sealer`, every row whose job may still
/// run and that is sealed with another key — commands not yet finished and
/// deliveries not yet delivered (pending, or dead letters that may be
/// replayed) — so an older key of `security.job_mac_keys` can be removed
/// (`hookrelay reseal-jobs`, docs/operations.md). Each row is verified with
/// its current key first and updated only if its seal is still the one read,
/// so it is safe while the service runs and can be repeated.
///
/// # Errors
/// Database errors (rows already re-sealed stay re-sealed).
pub async fn reseal_jobs(
    pool: &sqlx::PgPool,
    sealer: &JobSealer,
) -> sqlx::Result<ResealJobsReport> {
    let first = sealer.keys.first().map(|(id, _)| id.as_str()).unwrap_or("");
    let mut report = ResealJobsReport::default();
    let commands: Vec<CommandRow> = sqlx::query_as(
        "SELECT id, client_id, integration, operation, method, path, params, body,
                callback_url, idempotency_key, seal
           FROM commands
          WHERE seal IS NOT NULL AND NOT starts_with(seal, $1 || ':')
          ORDER BY id",
    )
    .bind(first)
    .fetch_all(pool)
    .await?;
    for c in commands {
        let fields = ExecuteSeal {
            command_id: c.id,
            client_id: &c.client_id,
            integration: &c.integration,
            operation: &c.operation,
            method: &c.method,
            path: &c.path,
            params: &c.params,
            body: c.body.as_deref(),
            callback_url: &c.callback_url,
            idempotency_key: c.idempotency_key.as_deref(),
        };
        if let Err(error) = sealer.verify_execute(Some(&c.seal), &fields) {
            tracing::error!(command_id = %c.id, %error, "a command's seal does not verify; not re-sealed");
            report.unverified += 1;
            continue;
        }
        report.resealed += sqlx::query("UPDATE commands SET seal = $3 WHERE id = $1 AND seal = $2")
            .bind(c.id)
            .bind(&c.seal)
            .bind(sealer.seal_execute(&fields))
            .execute(pool)
            .await?
            .rows_affected();
    }
    let deliveries: Vec<DeliveryRow> = sqlx::query_as(
        "SELECT d.id, d.command_id, c.client_id, d.url, d.payload, d.seal
           FROM deliveries d JOIN commands c ON c.id = d.command_id
          WHERE d.seal IS NOT NULL AND NOT starts_with(d.seal, $1 || ':')
            AND d.status <> 'delivered'
          ORDER BY d.id",
    )
    .bind(first)
    .fetch_all(pool)
    .await?;
    for d in deliveries {
        let fields = DeliverSeal {
            delivery_id: d.id,
            command_id: d.command_id,
            client_id: &d.client_id,
            url: &d.url,
            payload: &d.payload,
        };
        if let Err(error) = sealer.verify_deliver(Some(&d.seal), &fields) {
            tracing::error!(delivery_id = %d.id, %error, "a delivery's seal does not verify; not re-sealed");
            report.unverified += 1;
            continue;
        }
        report.resealed +=
            sqlx::query("UPDATE deliveries SET seal = $3 WHERE id = $1 AND seal = $2")
                .bind(d.id)
                .bind(&d.seal)
                .bind(sealer.seal_deliver(&fields))
                .execute(pool)
                .await?
                .rows_affected();
    }
    Ok(report)
}

fn mac(key: &[u8], input: &[u8]) -> Hmac<Sha256> {
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    m.update(input);
    m
}

/// Canonical encoder: every field is length-prefixed, so no two different
/// field lists encode alike.
struct Encoder(Vec<u8>);

impl Encoder {
    fn new(kind: &str) -> Self {
        Encoder::labelled(LABEL, kind)
    }

    fn labelled(label: &[u8], kind: &str) -> Self {
        let mut e = Encoder(Vec::with_capacity(512));
        e.0.extend_from_slice(label);
        e.bytes(kind.as_bytes());
        e
    }

    /// An execute seal's fields before `params` (the same in `v1` and `v2`).
    fn execute_head(&mut self, f: &ExecuteSeal<'_>) {
        self.bytes(f.command_id.as_bytes());
        for field in [f.client_id, f.integration, f.operation, f.method, f.path] {
            self.bytes(field.as_bytes());
        }
    }

    /// An execute seal's fields after `body`.
    fn execute_tail(&mut self, f: &ExecuteSeal<'_>) {
        self.bytes(f.callback_url.as_bytes());
        self.opt(f.idempotency_key);
    }

    fn len(&mut self, n: usize) {
        self.0.extend_from_slice(&(n as u64).to_be_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }

    fn opt(&mut self, s: Option<&str>) {
        match s {
            None => self.0.push(0),
            Some(s) => {
                self.0.push(1);
                self.bytes(s.as_bytes());
            }
        }
    }

    fn json(&mut self, v: &Value) {
        match v {
            Value::Null => self.0.push(b'n'),
            Value::Bool(false) => self.0.push(b'f'),
            Value::Bool(true) => self.0.push(b't'),
            Value::Number(n) => {
                let int = n
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))
                    .or_else(|| {
                        n.as_f64()
                            .filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 1e38)
                            // Exact: an integral f64 below 2^127 fits an i128.
                            .map(|f| f as i128)
                    });
                match int {
                    Some(i) => {
                        self.0.push(b'i');
                        self.bytes(i.to_string().as_bytes());
                    }
                    None => {
                        self.0.push(b'd');
                        let bits = n.as_f64().unwrap_or(f64::NAN).to_bits();
                        self.0.extend_from_slice(&bits.to_be_bytes());
                    }
                }
            }
            Value::String(s) => {
                self.0.push(b's');
                self.bytes(s.as_bytes());
            }
            Value::Array(items) => {
                self.0.push(b'a');
                self.len(items.len());
                for item in items {
                    self.json(item);
                }
            }
            Value::Object(map) => {
                self.0.push(b'o');
                self.len(map.len());
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                for (k, v) in entries {
                    self.bytes(k.as_bytes());
                    self.json(v);
                }
            }
        }
    }
}

fn encode_execute(f: &ExecuteSeal<'_>) -> Vec<u8> {
    let mut e = Encoder::new("execute");
    e.execute_head(f);
    e.bytes(f.params.as_bytes());
    e.opt(f.body);
    e.execute_tail(f);
    e.0
}

/// The `v1` encoding (a parsed JSON tree), for seals written before JSON was
/// kept as text; `None` when the stored text does not parse.
fn encode_execute_legacy(f: &ExecuteSeal<'_>) -> Option<Vec<u8>> {
    let params: Value = serde_json::from_str(f.params).ok()?;
    let body: Option<Value> = match f.body {
        None => None,
        Some(b) => Some(serde_json::from_str(b).ok()?),
    };
    let mut e = Encoder::labelled(LEGACY_LABEL, "execute");
    e.execute_head(f);
    e.json(&params);
    match &body {
        None => e.0.push(0),
        Some(b) => {
            e.0.push(1);
            e.json(b);
        }
    }
    e.execute_tail(f);
    Some(e.0)
}

fn encode_deliver(f: &DeliverSeal<'_>) -> Vec<u8> {
    let mut e = Encoder::new("deliver");
    e.bytes(f.delivery_id.as_bytes());
    e.bytes(f.command_id.as_bytes());
    e.bytes(f.client_id.as_bytes());
    e.bytes(f.url.as_bytes());
    e.bytes(f.payload.as_bytes());
    e.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(id: &str, byte: u8) -> SecretString {
        SecretString::from(format!(
            "{id}:{}",
            base64::engine::general_purpose::STANDARD.encode([byte; MAC_KEY_BYTES])
        ))
    }

    fn sealer(keys: &[SecretString]) -> JobSealer {
        JobSealer::from_keys(keys).expect("valid keys")
    }

    fn execute<'a>(params: &'a str, body: Option<&'a str>) -> ExecuteSeal<'a> {
        ExecuteSeal {
            command_id: Uuid::nil(),
            client_id: "acme",
            integration: "httpbin",
            operation: "create_thing",
            method: "POST",
            path: "/things/42",
            params,
            body,
            callback_url: "https://partner.example/hooks",
            idempotency_key: Some("k1"),
        }
    }

    #[test]
    fn seals_verify_and_any_change_breaks_them() {
        let s = sealer(&[key("m1", 1)]);
        let params = json!({"thing_id": "42"}).to_string();
        let body = json!({"a": [1, 2.5, "x"], "b": {"c": null}}).to_string();
        let f = execute(&params, Some(&body));
        let seal = s.seal_execute(&f);
        assert!(seal.starts_with("m1:"), "{seal}");
        assert_eq!(s.verify_execute(Some(&seal), &f), Ok(()));
        let other_body = json!({"a": [1, 2.5, "y"], "b": {"c": null}}).to_string();
        for changed in [
            ExecuteSeal {
                client_id: "beta",
                ..f
            },
            ExecuteSeal {
                path: "/things/43",
                ..f
            },
            ExecuteSeal {
                callback_url: "https://evil.example/",
                ..f
            },
            ExecuteSeal {
                idempotency_key: None,
                ..f
            },
            ExecuteSeal {
                body: Some(&other_body),
                ..f
            },
            ExecuteSeal { body: None, ..f },
            ExecuteSeal {
                command_id: Uuid::max(),
                ..f
            },
        ] {
            assert_eq!(
                s.verify_execute(Some(&seal), &changed),
                Err(SealError::Mismatch),
                "{changed:?}"
            );
        }
        // Length prefixes: moving bytes between fields changes the MAC.
        let shifted = ExecuteSeal {
            integration: "httpbincreate",
            operation: "_thing",
            ..f
        };
        assert_eq!(
            s.verify_execute(Some(&seal), &shifted),
            Err(SealError::Mismatch)
        );
        assert_eq!(s.verify_execute(None, &f), Err(SealError::Missing));
        assert_eq!(
            s.verify_execute(Some("m1:AAAA"), &f),
            Err(SealError::Malformed)
        );
        let relabelled = format!("m9:{}", seal.split_once(':').expect("format").1);
        assert_eq!(
            s.verify_execute(Some(&relabelled), &f),
            Err(SealError::UnknownKey("m9".into()))
        );
    }

    #[test]
    fn the_seal_covers_the_exact_text() {
        // Numbers that a float parser may not read back to the same f64, and
        // ones no f64 holds: sealed and verified as text, they always match.
        let s = sealer(&[key("m1", 1)]);
        let params = "{}";
        for body in [
            r#"{"x": -965.56748141547666, "y": 0.30000000000000004, "z": 1.2345678901234567e-7}"#,
            r#"[1.7976931348623157e308, 2.5e-308, -0.0, 1e400, 123456789012345678901234567890]"#,
        ] {
            let seal = s.seal_execute(&execute(params, Some(body)));
            assert_eq!(
                s.verify_execute(Some(&seal), &execute(params, Some(body))),
                Ok(())
            );
        }
        // One byte apart is a different row, even where the numbers are equal.
        let seal = s.seal_execute(&execute(params, Some("[1.0]")));
        assert_eq!(
            s.verify_execute(Some(&seal), &execute(params, Some("[1]"))),
            Err(SealError::Mismatch)
        );
        assert_eq!(
            s.verify_execute(Some(&seal), &execute(params, Some("[1.0] "))),
            Err(SealError::Mismatch)
        );
    }

    #[test]
    fn seals_from_before_json_was_text_still_verify() {
        // A v1 seal covered the parsed tree; the row read back from the
        // migrated column is jsonb's spelling of the same value.
        let s = sealer(&[key("m1", 1)]);
        let params = r#"{"thing_id": "42"}"#;
        let sent: Value = serde_json::from_str(r#"{"b": 1e2, "a": {"y": 1.5}}"#).expect("json");
        let fields = execute(params, Some(r#"{"a": {"y": 1.5}, "b": 100}"#));
        let mut e = Encoder::labelled(LEGACY_LABEL, "execute");
        e.execute_head(&fields);
        e.json(&serde_json::from_str(params).expect("json"));
        e.0.push(1);
        e.json(&sent);
        e.execute_tail(&fields);
        let legacy = s.seal(&e.0);
        assert_eq!(s.verify_execute(Some(&legacy), &fields), Ok(()));
        let altered = execute(params, Some(r#"{"a": {"y": 1.5}, "b": 101}"#));
        assert_eq!(
            s.verify_execute(Some(&legacy), &altered),
            Err(SealError::Mismatch)
        );
    }

    #[test]
    fn deliver_seals_and_key_rotation() {
        let old = sealer(&[key("m1", 1)]);
        let f = DeliverSeal {
            delivery_id: Uuid::nil(),
            command_id: Uuid::max(),
            client_id: "acme",
            url: "https://partner.example/hooks",
            payload: r#"{"type":"command.succeeded"}"#,
        };
        let seal = old.seal_deliver(&f);
        let rotated = sealer(&[key("m2", 2), key("m1", 1)]);
        assert_eq!(rotated.verify_deliver(Some(&seal), &f), Ok(()));
        assert!(rotated.seal_deliver(&f).starts_with("m2:"));
        let changed = DeliverSeal {
            payload: r#"{"type":"command.failed"}"#,
            ..f
        };
        assert_eq!(
            rotated.verify_deliver(Some(&seal), &changed),
            Err(SealError::Mismatch)
        );
        // Same id, other key material.
        let impostor = sealer(&[key("m1", 7)]);
        assert_eq!(
            impostor.verify_deliver(Some(&seal), &f),
            Err(SealError::Mismatch)
        );
        assert_eq!(
            format!("{rotated:?}"),
            r#"JobSealer { key_ids: ["m2", "m1"] }"#
        );
    }

    #[test]
    fn bad_key_lists_are_refused() {
        assert_eq!(
            JobSealer::from_keys(&[]).expect_err("empty"),
            KeyConfigError::Empty
        );
        assert_eq!(
            JobSealer::from_keys(&[key("m1", 1), key("m1", 2)]).expect_err("dup"),
            KeyConfigError::DuplicateId { id: "m1".into() }
        );
        let short = SecretString::from("m1:AAAA");
        assert!(matches!(
            JobSealer::from_keys(&[short]).expect_err("short"),
            KeyConfigError::BadLength { entry: 1, .. }
        ));
    }
}
