//! SSRF guard for callbacks: the host check at intake and before each
//! attempt ([`check_literal_host`]: `localhost`, `*.localhost` and literal
//! non-public addresses are refused unless `security.allow_private_callbacks`
//! or `security.allowed_callback_nets` permit them), and the resolver that
//! vets every address a name resolves to at connection time
//! ([`GuardedResolver`]), which closes DNS rebinding: a name that resolves to
//! a non-public address fails the attempt. The pure rules (address
//! classification, [`CallbackPolicy`]) live in [`crate::domain`], where
//! configuration shares them; building the policy from settings is here.

pub use crate::domain::{check_literal_host, is_private_host, is_private_ip, CallbackPolicy};

// `CallbackPolicy` itself is a plain value in `domain` (config and intake
// validation use it); building it from the settings belongs here.
impl CallbackPolicy {
    /// The policy of `[security]`, as configuration built it at load.
    pub fn from_settings(s: &crate::config::SecuritySettings) -> Self {
        s.callback_policy.clone()
    }
}

/// DNS resolver for outbound callbacks (SSRF guard, resolution time): it
/// resolves with the system resolver and keeps only public addresses, so the
/// HTTP client can only ever connect to a vetted address — a name that
/// resolves (or rebinds) to loopback, private, link-local or metadata
/// addresses fails the attempt instead. With `allow_private` it passes
/// everything (tests, local development).
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    /// What may be connected to.
    pub policy: std::sync::Arc<CallbackPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let vetted: Vec<std::net::SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| policy.permits_ip(a.ip()))
                .collect();
            if vetted.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> = Box::new(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("refused: {host} resolves only to non-public addresses"),
                ));
                return Err(err);
            }
            let addrs: reqwest::dns::Addrs = Box::new(vetted.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

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
            "198.18.0.1",
            "198.19.255.255",
            "192.0.0.8",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.2.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378::1",
            "ff02::1",
            "::",
            "::ffff:0:127.0.0.1",
            "::ffff:0:169.254.169.254",
            "::ffff:0:10.0.0.1",
            "::ffff:0:8.8.8.8",
            "::ffff:0:0:127.0.0.1",
            "::8.8.8.8",
            "100::1",
            "fec0::1",
            "64:ff9b:1::a00:1",
            "2001:2::1",
            "3fff::1",
            "5f00::1",
        ] {
            let ip: IpAddr = private.parse().expect("ip");
            assert!(is_private_ip(ip), "{private} should be private");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "198.20.0.1",
            "::ffff:8.8.8.8",
            "2a00:1450:4001::1",
            "2001:200::1",
            "3fff:1000::1",
        ] {
            let ip: IpAddr = public.parse().expect("ip");
            assert!(!is_private_ip(ip), "{public} should be public");
        }
    }

    #[tokio::test]
    async fn resolver_refuses_names_of_local_addresses() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let guarded = GuardedResolver {
            policy: std::sync::Arc::new(CallbackPolicy::default()),
        };
        let err = guarded.resolve(name).await.err().expect("refused");
        assert!(err.to_string().contains("non-public"), "{err}");
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let open = GuardedResolver {
            policy: std::sync::Arc::new(CallbackPolicy {
                allow_private: true,
                ..Default::default()
            }),
        };
        assert!(open.resolve(name).await.is_ok());
        let strict = CallbackPolicy::default();
        assert!(check_literal_host("http://10.0.0.1/x", &strict).is_err());
        assert!(check_literal_host("http://[::ffff:169.254.169.254]/x", &strict).is_err());
        assert!(check_literal_host("http://[::ffff:0:127.0.0.1]/x", &strict).is_err());
        assert!(check_literal_host("https://partner.example:0/x", &strict).is_err());
        assert!(check_literal_host("https://partner.example/x", &strict).is_ok());
        let open = CallbackPolicy {
            allow_private: true,
            ..Default::default()
        };
        assert!(check_literal_host("http://10.0.0.1/x", &open).is_ok());
        let partner = CallbackPolicy {
            allowed: vec!["10.20.0.0/16".parse().expect("net")],
            https_only: true,
            ..Default::default()
        };
        assert!(check_literal_host("https://10.20.1.2/x", &partner).is_ok());
        assert!(check_literal_host("https://10.21.1.2/x", &partner).is_err());
        assert!(
            check_literal_host("http://partner.example/x", &partner).is_err(),
            "https only"
        );
    }

    #[test]
    fn localhost_names_are_private() {
        assert!(is_private_host(&url::Host::Domain("localhost")));
        assert!(is_private_host(&url::Host::Domain("api.localhost.")));
        assert!(!is_private_host(&url::Host::Domain("partner.example")));
    }
}
