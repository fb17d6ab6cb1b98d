//! Domain newtypes: values that are valid by construction, and the pure
//! parsers that configuration and the runtime share.
//!
//! Request fields are parsed into these at the edge (parse, don't validate);
//! the rest of the code can rely on them without re-checking. The shared
//! parsers are rotatable key lists ([`parse_keys`], [`KeyRing`]), the callback
//! address policy ([`CallbackPolicy`], [`is_private_ip`]), roles ([`Role`]),
//! upstream path templates ([`PathTemplate`]) and cron expressions
//! ([`parse_cron`]): `config` parses settings into them once, at load, and
//! the modules that build runtime objects take the parsed values.
//!
//! This is the bottom of the module graph: it imports no other module of the
//! crate (`scripts/check_cycles.py`, run by CI, keeps the graph acyclic).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use base64::Engine;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A callback URL: absolute `http`/`https`, with a host, not port 0, no
/// credentials, no fragment, at most `max_len` bytes, and (unless private
/// callbacks are allowed) not `localhost` or a literal non-public address
/// ([`is_private_ip`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackUrl(url::Url);

impl CallbackUrl {
    /// Parses and checks a callback URL.
    ///
    /// # Errors
    /// A sentence saying what is wrong (the caller names the field).
    pub fn parse(s: &str, max_len: usize, policy: &CallbackPolicy) -> Result<Self, String> {
        if s.len() > max_len {
            return Err(format!("must be at most {max_len} bytes"));
        }
        let url = url::Url::parse(s).map_err(|e| format!("is not a valid absolute URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must use http or https".into());
        }
        if policy.https_only && url.scheme() != "https" {
            return Err("must use https (security.https_only_callbacks)".into());
        }
        let host = url.host().ok_or_else(|| "must have a host".to_owned())?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain credentials".into());
        }
        if url.fragment().is_some() {
            return Err("must not contain a fragment".into());
        }
        // Port 0 is no service's port; connecting to it is platform-defined.
        if url.port() == Some(0) {
            return Err("must not use port 0".into());
        }
        if !policy.permits_host(&host) {
            return Err(
                "must not point to localhost or a private, loopback or link-local address".into(),
            );
        }
        Ok(CallbackUrl(url))
    }

    /// The URL as a string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// A URL read back from storage (`commands.callback_url`,
    /// `deliveries.url`): it passed [`CallbackUrl::parse`] when it was
    /// accepted, so only its shape is checked again (absolute `http`/`https`
    /// with a host), not the callback policy, which may have changed since —
    /// the sender checks the policy before every attempt. The text is kept
    /// as is: a stored URL is already in its serialised form, so
    /// [`CallbackUrl::as_str`] returns exactly what was stored (seals cover it).
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn from_stored(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("is not a valid absolute URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err("is not an http or https URL with a host".into());
        }
        if url.as_str() != s {
            return Err("is not in serialised form".into());
        }
        Ok(CallbackUrl(url))
    }
}

impl fmt::Display for CallbackUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stored as Postgres `text`: encoded as [`CallbackUrl::as_str`], decoded
/// with [`CallbackUrl::from_stored`] (a row whose URL is not one fails its
/// decode, naming the problem).
impl sqlx::Type<sqlx::Postgres> for CallbackUrl {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for CallbackUrl {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for CallbackUrl {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let s = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        CallbackUrl::from_stored(s).map_err(|why| format!("callback URL `{s}` {why}").into())
    }
}

/// A client-chosen `Idempotency-Key`: 1 to 255 visible ASCII characters
/// (`docs/reference.md`; the IETF httpapi idempotency-key draft uses a string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Longest accepted key, characters.
    pub const MAX_LEN: usize = 255;

    /// Parses a header value.
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err("must be visible ASCII characters".into());
        }
        Ok(IdempotencyKey(s.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether Postgres can store `t` and it is a plausible API time: years 1 to
/// 9999. chrono also reads signed years (`-5000-01-01T00:00:00Z`) and
/// microsecond counts far outside that, which Postgres refuses (SQLSTATE
/// 22008) — a 422 for the caller, not a database error.
pub fn storable_time(t: &chrono::DateTime<chrono::Utc>) -> bool {
    (1..=9999).contains(&chrono::Datelike::year(t))
}

/// A command's lifecycle (`docs/reference.md`, "The status document").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Stored in the outbox, not yet picked up.
    #[default]
    Accepted,
    /// A worker is calling (or retrying) the upstream.
    InProgress,
    /// The upstream answered 2xx.
    Succeeded,
    /// The upstream call ended without success.
    Failed,
}

impl CommandStatus {
    /// The database/wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Accepted => "accepted",
            CommandStatus::InProgress => "in_progress",
            CommandStatus::Succeeded => "succeeded",
            CommandStatus::Failed => "failed",
        }
    }

    /// Parses the database/wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "accepted" => Some(CommandStatus::Accepted),
            "in_progress" => Some(CommandStatus::InProgress),
            "succeeded" => Some(CommandStatus::Succeeded),
            "failed" => Some(CommandStatus::Failed),
            _ => None,
        }
    }

    /// Whether the upstream call has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, CommandStatus::Succeeded | CommandStatus::Failed)
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A callback delivery's state: `pending | delivered | dead_lettered`
/// (`docs/reference.md`, "The status document").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not yet delivered; attempts may be scheduled.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Given up: schedule exhausted or the receiver answered 410 Gone.
    DeadLettered,
}

impl DeliveryStatus {
    /// The database/wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::DeadLettered => "dead_lettered",
        }
    }

    /// Parses the database/wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead_lettered" => Some(DeliveryStatus::DeadLettered),
            _ => None,
        }
    }
}

/// Length of an encryption key in `security.signing_key_encryption_keys`,
/// bytes (XChaCha20-Poly1305 uses 256-bit keys).
pub const ENCRYPTION_KEY_BYTES: usize = 32;

/// Longest key id, characters. Ids are stored in every sealed value.
pub const MAX_KEY_ID_LEN: usize = 32;

/// Why `security.signing_key_encryption_keys` is unusable. Messages never
/// contain key material.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyConfigError {
    /// No key at all.
    #[error("needs at least one `id:base64` key (the first one seals new secrets)")]
    Empty,
    /// An entry without `:`.
    #[error("entry {entry} is not `id:base64` (an id, a colon, then 32 bytes in base64)")]
    Format {
        /// 1-based position in the list.
        entry: usize,
    },
    /// A key id outside the allowed characters or length.
    #[error("entry {entry}: the key id must be 1 to 32 ASCII letters, digits, '.', '_' or '-'")]
    BadId {
        /// 1-based position in the list.
        entry: usize,
    },
    /// The key is not standard base64.
    #[error("entry {entry} (key id `{id}`): the key is not valid base64")]
    BadBase64 {
        /// 1-based position in the list.
        entry: usize,
        /// The key id.
        id: String,
    },
    /// The key does not decode to 32 bytes.
    #[error("entry {entry} (key id `{id}`): the key must be 32 bytes, got {len}")]
    BadLength {
        /// 1-based position in the list.
        entry: usize,
        /// The key id.
        id: String,
        /// Decoded length, bytes.
        len: usize,
    },
    /// Two entries share an id, so a sealed value would not say which one opens it.
    #[error("key id `{id}` appears more than once")]
    DuplicateId {
        /// The repeated id.
        id: String,
    },
}

/// One parsed key of a rotatable key list: its id and its raw bytes (wiped
/// from memory on drop).
pub type KeyEntry = (String, Zeroizing<Vec<u8>>);

/// Parses a rotatable key list (`id:base64` entries, the first one current):
/// ids of 1 to [`MAX_KEY_ID_LEN`] ASCII letters, digits, `.`, `_` or `-`,
/// unique; keys of exactly `key_len` bytes in standard base64. Shared by
/// `security.signing_key_encryption_keys` and `security.job_mac_keys`.
///
/// # Errors
/// [`KeyConfigError`] for the first bad entry (1-based), without key material.
pub fn parse_keys(
    entries: &[SecretString],
    key_len: usize,
) -> Result<Vec<KeyEntry>, KeyConfigError> {
    if entries.is_empty() {
        return Err(KeyConfigError::Empty);
    }
    let mut keys: Vec<KeyEntry> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let entry_no = i + 1;
        let (id, encoded) = entry
            .expose_secret()
            .trim()
            .split_once(':')
            .ok_or(KeyConfigError::Format { entry: entry_no })?;
        if !is_key_id(id) {
            return Err(KeyConfigError::BadId { entry: entry_no });
        }
        if keys.iter().any(|(k, _)| k == id) {
            return Err(KeyConfigError::DuplicateId { id: id.to_owned() });
        }
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| KeyConfigError::BadBase64 {
                    entry: entry_no,
                    id: id.to_owned(),
                })?,
        );
        if raw.len() != key_len {
            return Err(KeyConfigError::BadLength {
                entry: entry_no,
                id: id.to_owned(),
                len: raw.len(),
            });
        }
        keys.push((id.to_owned(), raw));
    }
    Ok(keys)
}

/// A parsed rotatable key list (see [`parse_keys`]): at least one key, the
/// first one current. Built once from configuration; the sealers are made
/// from it without parsing again. `Debug` shows key ids only.
#[derive(Clone, Default)]
pub struct KeyRing(Vec<KeyEntry>);

impl KeyRing {
    /// Parses `id:base64` entries of `key_len` bytes ([`parse_keys`]).
    ///
    /// # Errors
    /// [`KeyConfigError`] for the first bad entry, without key material.
    pub fn parse(entries: &[SecretString], key_len: usize) -> Result<KeyRing, KeyConfigError> {
        parse_keys(entries, key_len).map(KeyRing)
    }

    /// The keys, the current (sealing) one first.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.0
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field(
                "key_ids",
                &self.0.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn is_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Where callbacks may go: `[security]` as one value shared by intake
/// validation, the resolver and the sender.
#[derive(Debug, Clone, Default)]
pub struct CallbackPolicy {
    /// `security.allow_private_callbacks`: everything is allowed.
    pub allow_private: bool,
    /// `security.https_only_callbacks`.
    pub https_only: bool,
    /// `security.allowed_callback_cidrs`: non-public networks allowed anyway.
    pub allowed: Vec<ipnet::IpNet>,
}

impl CallbackPolicy {
    /// Whether a callback may connect to `ip`.
    pub fn permits_ip(&self, ip: IpAddr) -> bool {
        self.allow_private || !is_private_ip(ip) || self.allowed.iter().any(|n| n.contains(&ip))
    }

    /// Whether a URL host may be used as written (names are checked again
    /// after resolution).
    pub fn permits_host(&self, host: &url::Host<&str>) -> bool {
        match host {
            url::Host::Domain(_) => self.allow_private || !is_private_host(host),
            url::Host::Ipv4(ip) => self.permits_ip(IpAddr::V4(*ip)),
            url::Host::Ipv6(ip) => self.permits_ip(IpAddr::V6(*ip)),
        }
    }
}

/// Refuses a URL whose host is a literal non-public IP (literal addresses
/// bypass DNS, so [`crate::security::GuardedResolver`] never sees them), or that names port 0
/// (no service listens there; some stacks connect it to a local port).
///
/// # Errors
/// Why the URL is refused.
pub fn check_literal_host(url: &str, policy: &CallbackPolicy) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("refused: bad URL ({e})"))?;
    if policy.https_only && parsed.scheme() != "https" {
        return Err("refused: only https callbacks are allowed".into());
    }
    if parsed.port() == Some(0) {
        return Err("refused: port 0".into());
    }
    match parsed.host() {
        Some(h) if !policy.permits_host(&h) => Err(format!("refused: {h} is not a public address")),
        _ => Ok(()),
    }
}

/// Whether `host` (as it appears in a URL, IPv6 without brackets) names the
/// local machine or a non-public address.
pub fn is_private_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        url::Host::Ipv4(ip) => is_private_ip(IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) => is_private_ip(IpAddr::V6(*ip)),
    }
}

/// Loopback, private (RFC 1918 / ULA), link-local, CGNAT, unspecified,
/// broadcast, multicast, documentation and IPv4-mapped forms of those. For
/// IPv6 only global unicast (`2000::/3`, IANA IPv6 Address Space registry) is
/// public, minus its special-purpose blocks, plus NAT64 `64:ff9b::/96` of a
/// public IPv4 address; everything else — `::/8` (IPv4-compatible and
/// IPv4-translated `::ffff:0:0:0/96` forms included), discard-only
/// `100::/64`, deprecated site-local `fec0::/10`, ULA, link-local,
/// multicast — is non-public.
pub fn is_private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            is_private_v6(v6)
        }
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 CGNAT
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 IETF protocol assignments
        || o[0] >= 240
}

/// The IPv4 address embedded in an IPv6 transition form, if any:
/// IPv4-compatible `::/96`, NAT64 `64:ff9b::/96` (RFC 6052), 6to4 `2002::/16`
/// (RFC 3056); Teredo `2001::/32` is refused outright (its client address is
/// obfuscated).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        return Some(v4(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(v4(s[1], s[2]));
    }
    None
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = embedded_v4(ip) {
        if is_private_v4(v4) {
            return true;
        }
    }
    // NAT64 well-known prefix (RFC 6052) of a public IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return false;
    }
    // Outside global unicast 2000::/3: ::/8 (unspecified, loopback,
    // IPv4-compatible, IPv4-translated `::ffff:0:0:0/96` — RFC 2765 — and
    // the rest of the reserved block), discard-only 100::/64 (RFC 6666),
    // local-use NAT64 64:ff9b:1::/48 (RFC 8215), ULA fc00::/7, link-local
    // fe80::/10, site-local fec0::/10 (RFC 3879), multicast ff00::/8.
    (s[0] & 0xe000) != 0x2000
        || (s[0] == 0x2001 && s[1] < 0x0200) // 2001::/23 IETF protocol assignments, Teredo 2001::/32
        || (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32 documentation
        || (s[0] == 0x3fff && s[1] < 0x1000) // 3fff::/20 documentation (RFC 9637)
        || s[0] == 0x5f00 // 5f00::/16 SRv6 SIDs (RFC 9602)
}

/// A role from the token's `roles` claim (unknown role names there are
/// ignored), or from a configured role list (`integrations.NAME.operations.OP.roles`,
/// where an unknown name is a configuration error naming the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Role {
    /// Sends commands, reads its own commands, manages its own signing secret.
    Client,
    /// Everything, including dead letters and replay.
    Admin,
    /// Read-only access to every client's commands.
    Reader,
}

impl Role {
    /// Parses a role name as it appears in the `roles` claim.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "client" => Some(Role::Client),
            "admin" => Some(Role::Admin),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }

    /// The role's name in tokens and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Admin => "admin",
            Role::Reader => "reader",
        }
    }
}

impl TryFrom<String> for Role {
    type Error = String;

    /// A configured role name.
    ///
    /// # Errors
    /// A sentence naming the unknown role and the known ones.
    fn try_from(name: String) -> Result<Role, String> {
        Role::parse(&name)
            .ok_or_else(|| format!("unknown role `{name}`; roles are client, reader and admin"))
    }
}

/// One piece of a path template: literal text or a `{name}` placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed path template such as `/things/{thing_id}`. Configuration
/// deserialises `integrations.NAME.operations.OP.path` (and query paths)
/// straight into it, so a bad template fails at load, naming the key, and
/// nothing parses a template again at run time. It displays as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PathTemplate(pub(crate) Vec<Segment>);

impl TryFrom<String> for PathTemplate {
    type Error = String;

    fn try_from(template: String) -> Result<PathTemplate, String> {
        PathTemplate::parse(&template)
    }
}

impl FromStr for PathTemplate {
    type Err = String;

    fn from_str(template: &str) -> Result<PathTemplate, String> {
        PathTemplate::parse(template)
    }
}

impl fmt::Display for PathTemplate {
    /// The template as written (`/things/{thing_id}`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in &self.0 {
            match segment {
                Segment::Literal(text) => f.write_str(text)?,
                Segment::Param(name) => write!(f, "{{{name}}}")?,
            }
        }
        Ok(())
    }
}

impl PathTemplate {
    /// Parses a template: starts with `/`; `{name}` placeholders with names of
    /// letters, digits and `_`; no stray braces.
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn parse(template: &str) -> Result<Self, String> {
        if !template.starts_with('/') {
            return Err("must start with '/'".into());
        }
        let mut segments = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err("has a '}' without '{'".into());
            }
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| "has a '{' without '}'".to_owned())?;
            let name = &rest[open + 1..close];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "placeholder '{{{name}}}' must be letters, digits and '_'"
                ));
            }
            if open > 0 {
                segments.push(Segment::Literal(rest[..open].to_owned()));
            }
            segments.push(Segment::Param(name.to_owned()));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_owned()));
        }
        Ok(PathTemplate(segments))
    }

    /// The placeholder names, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|s| match s {
            Segment::Param(p) => Some(p.as_str()),
            Segment::Literal(_) => None,
        })
    }
}

/// Parses a cron expression (seconds minutes hours day-of-month month
/// day-of-week \[year\], as the `cron` crate reads it; times are UTC).
///
/// # Errors
/// The parser's message.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(expr).map_err(|e| e.to_string())
}

/// Length of a key in `security.job_mac_keys`, bytes (the HMAC-SHA256 block
/// is 64 bytes; 32 random bytes give the full 256-bit strength).
pub const MAC_KEY_BYTES: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> CallbackPolicy {
        CallbackPolicy::default()
    }

    #[test]
    fn stored_callback_urls_read_back_unchanged() {
        let accepted =
            CallbackUrl::parse("https://partner.example/hooks?x=1", 2048, &strict()).expect("ok");
        let stored = CallbackUrl::from_stored(accepted.as_str()).expect("reads back");
        assert_eq!(stored, accepted);
        // The policy is not applied again: it may have changed since intake.
        assert!(CallbackUrl::from_stored("http://10.0.0.1/hook").is_ok());
        for bad in [
            "",
            "not a url",
            "ftp://partner.example/x",
            "https://Partner.example",
        ] {
            assert!(CallbackUrl::from_stored(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn callback_url_accepts_public_https() {
        let u =
            CallbackUrl::parse("https://partner.example/hooks?x=1", 2048, &strict()).expect("ok");
        assert_eq!(u.as_str(), "https://partner.example/hooks?x=1");
    }

    #[test]
    fn callback_url_rejections() {
        let cases = [
            ("ftp://partner.example/", "http or https"),
            ("not a url", "valid absolute URL"),
            ("https://user:pw@partner.example/", "credentials"),
            ("https://partner.example/#frag", "fragment"),
            ("http://localhost:9000/", "localhost"),
            ("http://127.0.0.1/", "private"),
            ("http://[::1]/", "private"),
            ("http://10.0.0.8/", "private"),
            ("http://169.254.169.254/latest/meta-data", "private"),
            ("http://[::ffff:0:127.0.0.1]/", "private"),
            ("http://[::ffff:0:0:127.0.0.1]/", "private"),
            ("http://[100::1]/", "private"),
            ("http://[fec0::1]/", "private"),
            ("https://partner.example:0/", "port 0"),
        ];
        for (input, expected) in cases {
            let err = CallbackUrl::parse(input, 2048, &strict()).expect_err(input);
            assert!(err.contains(expected), "{input}: {err}");
        }
        let long = format!("https://partner.example/{}", "a".repeat(3000));
        assert!(CallbackUrl::parse(&long, 2048, &strict()).is_err());
    }

    #[test]
    fn private_callbacks_allowed_when_configured() {
        let open = CallbackPolicy {
            allow_private: true,
            ..Default::default()
        };
        assert!(CallbackUrl::parse("http://127.0.0.1:9000/hook", 2048, &open).is_ok());
        assert!(
            CallbackUrl::parse("http://127.0.0.1:0/hook", 2048, &open).is_err(),
            "port 0 is never a callback port"
        );
        let partner = CallbackPolicy {
            allowed: vec!["10.20.0.0/16".parse().expect("net")],
            https_only: true,
            ..Default::default()
        };
        assert!(CallbackUrl::parse("https://10.20.3.4/hook", 2048, &partner).is_ok());
        assert!(CallbackUrl::parse("https://10.30.3.4/hook", 2048, &partner).is_err());
        let err =
            CallbackUrl::parse("http://partner.example/hook", 2048, &partner).expect_err("http");
        assert!(err.contains("https"), "{err}");
    }

    #[test]
    fn idempotency_key_bounds() {
        assert!(IdempotencyKey::parse("order-42").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("tab\tkey").is_err());
        assert!(IdempotencyKey::parse("ключ").is_err());
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            CommandStatus::Accepted,
            CommandStatus::InProgress,
            CommandStatus::Succeeded,
            CommandStatus::Failed,
        ] {
            assert_eq!(CommandStatus::parse(s.as_str()), Some(s));
        }
        for s in [
            DeliveryStatus::Pending,
            DeliveryStatus::Delivered,
            DeliveryStatus::DeadLettered,
        ] {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        }
    }
}

/// JSON text kept exactly as it was received: a client's `params` and `body`,
/// a vendor's answer. Stored as `text` and sent on byte for byte, so numbers
/// are the sender's numbers (`1.7976931348623157e308`, `0.30000000000000004`,
/// `-0.0`, integers beyond 2^64 and exponents all survive unchanged) and a
/// seal over the text verifies bit for bit after a database round trip. It
/// is never re-parsed into floats on the way (RFC 8259 §6 leaves number
/// precision to implementations; hookrelay keeps the text instead of choosing).
///
/// Serialising embeds the text verbatim (serde_json's `RawValue`); so a
/// document that contains a `JsonText` carries the original bytes.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonText(Box<serde_json::value::RawValue>);

impl JsonText {
    /// Checks that `text` is one JSON value and keeps it as it is (leading and
    /// trailing whitespace included).
    ///
    /// # Errors
    /// serde_json's syntax error when `text` is not valid JSON.
    pub fn parse(text: String) -> Result<JsonText, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(JsonText)
    }

    /// JSON `null`.
    pub fn null() -> JsonText {
        JsonText::from_value(&serde_json::Value::Null)
    }

    /// `s` as a JSON string.
    pub fn string(s: &str) -> JsonText {
        JsonText::from_value(&serde_json::Value::String(s.to_owned()))
    }

    /// The compact serialisation of `value` (for values hookrelay builds itself).
    pub fn from_value(value: &serde_json::Value) -> JsonText {
        JsonText(serde_json::value::to_raw_value(value).unwrap_or_else(|_| JsonText::raw_null()))
    }

    fn raw_null() -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string("null".to_owned())
            .unwrap_or_else(|_| unreachable!("`null` is JSON"))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Whether the text is JSON `null` (ignoring surrounding whitespace).
    pub fn is_null(&self) -> bool {
        self.as_str().trim() == "null"
    }

    /// Nesting depth counted on the text, without parsing numbers: a scalar is
    /// 0, `[]` and `{"a":1}` are 1.
    pub fn depth(&self) -> usize {
        json_text_depth(self.as_str())
    }
}

/// Nesting depth of JSON text (brackets outside string literals); see
/// [`JsonText::depth`].
pub fn json_text_depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

impl PartialEq for JsonText {
    /// Equal when the texts are equal byte for byte.
    fn eq(&self, other: &JsonText) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of outbox job (`jobs.kind`): one upstream call, or one webhook
/// delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobKind {
    /// Call the upstream for a command.
    #[default]
    Execute,
    /// Send a command's callback.
    Deliver,
}

impl JobKind {
    /// The stored name: `execute` or `deliver` (also the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Execute => "execute",
            JobKind::Deliver => "deliver",
        }
    }

    /// The kind of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "execute" => Some(JobKind::Execute),
            "deliver" => Some(JobKind::Deliver),
            _ => None,
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads and writes a text-backed enum as Postgres `text`, parsed once when
/// the row is decoded (an unknown name fails that row's decode, naming it).
macro_rules! text_enum_codec {
    ($ty:ty, $what:literal) => {
        impl sqlx::Type<sqlx::Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <String as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $ty {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                <$ty>::parse(s).ok_or_else(|| format!("unknown {} `{s}`", $what).into())
            }
        }
    };
}

text_enum_codec!(JobKind, "job kind");
text_enum_codec!(CommandStatus, "command status");
text_enum_codec!(DeliveryStatus, "delivery status");

#[cfg(test)]
mod json_text_tests {
    use super::*;

    #[test]
    fn keeps_the_text_and_embeds_it_verbatim() {
        let text = r#"{"x": -965.56748141547666, "y": 1.7976931348623157e308, "z": -0.0, "i": 123456789012345678901234567890, "e": 1e400}"#;
        let j = JsonText::parse(text.to_owned()).expect("valid JSON");
        assert_eq!(j.as_str(), text);
        let doc = serde_json::to_string(&serde_json::json!({"k": 1})).expect("serialises");
        assert_eq!(doc, r#"{"k":1}"#);
        #[derive(Serialize, Deserialize)]
        struct Wrap {
            body: JsonText,
        }
        let out = serde_json::to_string(&Wrap { body: j.clone() }).expect("serialises");
        assert_eq!(out, format!(r#"{{"body":{text}}}"#));
        let back: Wrap = serde_json::from_str(&out).expect("parses");
        assert_eq!(back.body, j);
    }

    #[test]
    fn job_kinds_round_trip_and_unknown_names_are_refused() {
        for kind in [JobKind::Execute, JobKind::Deliver] {
            assert_eq!(JobKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(JobKind::parse("Execute"), None);
        assert_eq!(JobKind::parse(""), None);
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(json_text_depth("1"), 0);
        assert_eq!(json_text_depth("[]"), 1);
        assert_eq!(json_text_depth(r#"{"a":[1,{"b":"[[[\"]]]"}]}"#), 3);
        assert!(JsonText::parse("[1,".to_owned()).is_err());
        assert!(JsonText::null().is_null());
        assert_eq!(JsonText::string("a\"b").as_str(), r#""a\"b""#);
    }
}
