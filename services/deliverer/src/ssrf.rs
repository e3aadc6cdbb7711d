//! The outbound guard: webhook requests never reach loopback, private,
//! link-local (cloud metadata included), shared, multicast or reserved
//! addresses unless the operator allows them. The check runs on the
//! addresses DNS returned, inside the HTTP client's resolver, so the
//! connection goes to an address that passed (no DNS rebinding between check
//! and connect). Redirects are not followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Networks the operator allows despite the rules (e.g. `127.0.0.0/8` locally).
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    networks: Vec<IpNet>,
}

impl AllowList {
    /// Parses `a.b.c.d/n` and `x::/n` networks; a bare address is a
    /// network of one.
    pub fn parse(networks: &[String]) -> Result<Self, String> {
        let networks = networks
            .iter()
            .map(|network| {
                network
                    .parse::<IpNet>()
                    .or_else(|_| network.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{network}` is not a network (a.b.c.d/n or x::/n)"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { networks })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|network| network.contains(&ip))
    }

    /// Whether a webhook may go to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.contains(ip) || is_public(ip)
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        || (first == 0x0064 && ip.segments()[1] == 0xff9b))
}

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// A DNS resolver that only returns permitted addresses.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl GuardedResolver {
    /// A resolver applying `allow`.
    pub fn new(allow: AllowList) -> Self {
        Self { allow: Arc::new(allow) }
    }
}

/// The reason a host was refused.
#[derive(Debug, thiserror::Error)]
#[error("blocked by the SSRF guard: {host} resolves only to addresses that are not allowed ({addresses})")]
pub struct Blocked {
    host: String,
    addresses: String,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = resolved.iter().copied().filter(|a| allow.permits(a.ip())).collect();
            if permitted.is_empty() {
                let addresses = resolved
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(Blocked { host, addresses }) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// Whether a URL's literal IP host is permitted (literal IPs skip DNS, so
/// they are checked here).
pub fn literal_ip_permitted(url: &url::Url, allow: &AllowList) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => allow.permits(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => allow.permits(IpAddr::V6(ip)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_refused() {
        let none = AllowList::default();
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "198.18.0.1",
        ] {
            let ip: IpAddr = blocked.parse().unwrap_or_else(|e| panic!("{blocked}: {e}"));
            assert!(!none.permits(ip), "{blocked} permitted");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            let ip: IpAddr = public.parse().unwrap_or_else(|e| panic!("{public}: {e}"));
            assert!(none.permits(ip), "{public} refused");
        }
    }

    #[test]
    fn the_allow_list_opens_networks() {
        let allow = AllowList::parse(&["127.0.0.0/8".to_owned(), "::1/128".to_owned()]).unwrap_or_default();
        assert!(allow.permits("127.0.0.1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))));
        assert!(allow.permits("::1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))));
        assert!(!allow.permits("10.0.0.1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))));
        assert!(AllowList::parse(&["10.0.0.0/33".to_owned()]).is_err());
        assert!(AllowList::parse(&["nonsense".to_owned()]).is_err());
    }
}
