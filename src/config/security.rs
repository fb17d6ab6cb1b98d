//! `[security]`: callback address policy, key rings for signing secrets and
//! job seals, and the redacted field names.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::{CallbackPolicy, KeyConfigError, KeyRing, ENCRYPTION_KEY_BYTES, MAC_KEY_BYTES};

use super::{invalid, ConfigError};

/// The key material (base64) of the development signing-secret encryption key
/// shipped in `config/default.toml` (`dev:` + this; it decodes to
/// `hookrelay-dev-key-change-me-0123`). Anyone can read it here, so values
/// sealed with it are not protected; configuring it logs a warning.
pub const DEV_SIGNING_KEY_ENCRYPTION_KEY: &str = "aG9va3JlbGF5LWRldi1rZXktY2hhbmdlLW1lLTAxMjM=";

/// The key material (base64) of the development job MAC key shipped in
/// `config/default.toml` (`dev:` + this; it decodes to
/// `hookrelay-dev-mac-change-me-0123`). Public, so seals made with it do not
/// stop someone who can write to the database; configuring it logs a warning.
pub const DEV_JOB_MAC_KEY: &str = "aG9va3JlbGF5LWRldi1tYWMtY2hhbmdlLW1lLTAxMjM=";

/// The default of `security.redact_fields`: JSON field names masked in
/// stored upstream results, receiver answers and logs (case-insensitive).
pub const DEFAULT_REDACT_FIELDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "client_secret",
    "token",
    "api_key",
    "apikey",
    "access_token",
    "refresh_token",
    "id_token",
    "authorization",
    "cookie",
    "set-cookie",
    "card_number",
    "cvv",
    "private_key",
];

/// `[security]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// Allow `localhost` and literal loopback/private/link-local callback hosts.
    pub allow_private_callbacks: bool,
    /// Refuse `http://` callback URLs (422 at intake).
    pub https_only_callbacks: bool,
    /// Non-public networks callbacks may reach anyway (CIDR strings, e.g. a
    /// partner on a private link: `["10.20.0.0/16"]`). Checked at intake and
    /// after DNS resolution.
    pub allowed_callback_cidrs: Vec<String>,
    /// The callback policy of the three keys above, built once by
    /// [`super::Settings::validate`]: what intake, the resolver and the sender use.
    #[serde(skip)]
    pub callback_policy: CallbackPolicy,
    /// Keys that seal signing secrets at rest (XChaCha20-Poly1305), each
    /// `id:<base64 of 32 bytes>`. The first seals new secrets, every entry
    /// opens, so the key is rotated by prepending a new one. Default: the
    /// development key [`DEV_SIGNING_KEY_ENCRYPTION_KEY`] (logged as a warning).
    pub signing_key_encryption_keys: Vec<SecretString>,
    /// `signing_key_encryption_keys`, parsed once by
    /// [`super::Settings::validate`]; the signing-secret sealer is made from it.
    #[serde(skip)]
    pub signing_keys: KeyRing,
    /// Keys that seal outbox jobs (HMAC-SHA256 over what a job acts on, see
    /// [`crate::security::seal`]), each `id:<base64 of 32 bytes>`. The first seals new
    /// jobs, every entry verifies. Required (at least one); the default is
    /// the development key [`DEV_JOB_MAC_KEY`] (logged as a warning).
    pub job_mac_keys: Vec<SecretString>,
    /// `job_mac_keys`, parsed once by [`super::Settings::validate`]; the job
    /// sealer is made from it.
    #[serde(skip)]
    pub job_keys: KeyRing,
    /// JSON field names (case-insensitive, any depth) masked as `[REDACTED]`
    /// in stored upstream results, receiver answers in the attempt log,
    /// `last_error` strings and logs ([`crate::security::redact`]). Default:
    /// [`DEFAULT_REDACT_FIELDS`].
    pub redact_fields: Vec<String>,
}

impl SecuritySettings {
    /// Whether the development encryption key (public, in this repository) is
    /// among `signing_key_encryption_keys`, under any id.
    pub fn uses_dev_encryption_key(&self) -> bool {
        self.signing_key_encryption_keys.iter().any(|k| {
            k.expose_secret()
                .split_once(':')
                .is_some_and(|(_, key)| key.trim() == DEV_SIGNING_KEY_ENCRYPTION_KEY)
        })
    }

    /// Whether the development job MAC key (public, in this repository) is
    /// among `job_mac_keys`, under any id.
    pub fn uses_dev_job_mac_key(&self) -> bool {
        self.job_mac_keys.iter().any(|k| {
            k.expose_secret()
                .split_once(':')
                .is_some_and(|(_, key)| key.trim() == DEV_JOB_MAC_KEY)
        })
    }
}

impl SecuritySettings {
    /// Builds the callback policy and the key rings (once; the runtime takes
    /// them from here) and trims the redacted field names.
    pub(super) fn check(&mut self) -> Result<(), ConfigError> {
        let allowed = self
            .allowed_callback_cidrs
            .iter()
            .map(|c| {
                c.trim().parse::<ipnet::IpNet>().map_err(|_| {
                    invalid(
                        "security.allowed_callback_cidrs",
                        format!("`{c}` is not a CIDR such as 10.20.0.0/16"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        self.callback_policy = CallbackPolicy {
            allow_private: self.allow_private_callbacks,
            https_only: self.https_only_callbacks,
            allowed,
        };
        self.signing_keys = KeyRing::parse(&self.signing_key_encryption_keys, ENCRYPTION_KEY_BYTES)
            .map_err(|e| invalid("security.signing_key_encryption_keys", e.to_string()))?;
        self.job_keys = KeyRing::parse(&self.job_mac_keys, MAC_KEY_BYTES).map_err(|e| match e {
            KeyConfigError::Empty => invalid(
                "security.job_mac_keys",
                "needs at least one `id:base64` key (the first one seals new jobs)",
            ),
            e => invalid("security.job_mac_keys", e.to_string()),
        })?;
        for field in &mut self.redact_fields {
            *field = field.trim().to_owned();
            if field.is_empty() || field.len() > 128 {
                return Err(invalid(
                    "security.redact_fields",
                    "every entry must be a field name of 1 to 128 bytes",
                ));
            }
        }
        Ok(())
    }
}
