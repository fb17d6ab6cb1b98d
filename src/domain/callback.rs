//! Callback addresses: the [`CallbackUrl`] newtype (parsed at intake,
//! read back from storage with [`CallbackUrl::from_stored`], a Postgres
//! `text` codec), the [`CallbackPolicy`] of `[security]`, and the address
//! classification intake, the guarded resolver and the sender share
//! ([`is_private_ip`], [`is_private_host`], [`check_literal_host`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
}
