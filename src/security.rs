//! Security helpers: the first-cut callback host check and signing secrets.
//!
//! The callback check refuses hosts that are `localhost` (or `*.localhost`)
//! or a *literal* loopback, private, link-local or otherwise non-public IP
//! address unless `security.allow_private_callbacks = true`. It does not resolve
//! DNS; resolution-time checks (DNS rebinding) are documented as a known gap in
//! `docs/security.md` until the full SSRF guard lands.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine;
use rand::RngCore;

/// Prefix of Standard Webhooks secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a new signing secret (Standard Webhooks allows 24 to 64).
pub const SECRET_BYTES: usize = 32;

/// A new `whsec_<base64 of 32 random bytes>` secret (Standard Webhooks format).
pub fn new_signing_secret() -> String {
    let mut key = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut key);
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The client's active signing secrets, newest first, creating the first one
/// if the client has none ("created on first use", SPEC). Concurrent first
/// uses converge on one secret (partial unique index on the current secret).
///
/// # Errors
/// Database errors.
pub async fn ensure_signing_secrets(
    pool: &sqlx::PgPool,
    client_id: &str,
) -> sqlx::Result<Vec<String>> {
    let active = |pool| {
        sqlx::query_scalar::<_, String>(
            "SELECT secret FROM signing_secrets
              WHERE client_id = $1 AND (expires_at IS NULL OR expires_at > now())
              ORDER BY created_at DESC",
        )
        .bind(client_id)
        .fetch_all(pool)
    };
    let secrets = active(pool).await?;
    if !secrets.is_empty() {
        return Ok(secrets);
    }
    sqlx::query(
        "INSERT INTO signing_secrets (id, client_id, secret) VALUES ($1, $2, $3)
         ON CONFLICT (client_id) WHERE expires_at IS NULL DO NOTHING",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(client_id)
    .bind(new_signing_secret())
    .execute(pool)
    .await?;
    active(pool).await
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
/// broadcast, multicast, documentation and IPv4-mapped forms of those.
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
        || o[0] >= 240
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_public_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = private.parse().expect("ip");
            assert!(is_private_ip(ip), "{private} should be private");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            let ip: IpAddr = public.parse().expect("ip");
            assert!(!is_private_ip(ip), "{public} should be public");
        }
    }

    #[test]
    fn localhost_names_are_private() {
        assert!(is_private_host(&url::Host::Domain("localhost")));
        assert!(is_private_host(&url::Host::Domain("api.localhost.")));
        assert!(!is_private_host(&url::Host::Domain("partner.example")));
    }

    #[test]
    fn secrets_have_the_standard_shape() {
        let s = new_signing_secret();
        let b = s.strip_prefix(SECRET_PREFIX).expect("prefix");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b)
            .expect("base64");
        assert_eq!(raw.len(), SECRET_BYTES);
        assert_ne!(s, new_signing_secret());
    }
}
