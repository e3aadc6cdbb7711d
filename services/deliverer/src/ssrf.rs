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
    /// Only the listed networks: public addresses are refused too.
    restricted: bool,
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
        Ok(Self {
            networks,
            restricted: false,
        })
    }

    /// Restricted to the listed networks (`deliverer.only_allowed_networks`):
    /// webhooks reach nothing else, public addresses included. For test
    /// and fuzzing environments that must not send traffic off the machine.
    pub fn restricted(self, restricted: bool) -> Self {
        Self { restricted, ..self }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|network| network.contains(&ip))
    }

    /// Whether a webhook may go to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.contains(ip) || (!self.restricted && is_public(ip))
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
    let segments = ip.segments();
    let [first, second, ..] = segments;
    // IPv4-compatible (`::a.b.c.d`, deprecated): the host is an IPv4 one.
    if segments[..6].iter().all(|s| *s == 0) {
        return !(ip.is_loopback() || ip.is_unspecified()) && is_public_v4(Ipv4Addr::from(ip.to_bits() as u32));
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local (fc00::/7, AWS's metadata fd00:ec2::254 among them)
        // and link-local (fe80::/10).
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        // Documentation (2001:db8::/32, 3fff::/20).
        || (first == 0x2001 && second == 0x0db8)
        || (first & 0xfff0) == 0x3ff0
        // NAT64 (64:ff9b::/96 and the local-use 64:ff9b:1::/48): they reach
        // IPv4 addresses through a translator, private ones included.
        || (first == 0x0064 && second == 0xff9b)
        // 6to4 (2002::/16) and Teredo (2001::/32) tunnel to IPv4 addresses.
        || first == 0x2002
        || (first == 0x2001 && second == 0)
        // Other IETF special purpose: benchmarking 2001:2::/48, ORCHID
        // 2001:10::/28 and 2001:20::/28, discard-only 100::/64.
        || (first == 0x2001 && second == 0x0002 && segments[2] == 0)
        || (first == 0x2001 && (0x0010..0x0030).contains(&second))
        || (first == 0x0100 && segments[1..4].iter().all(|s| *s == 0)))
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
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "::",
            "0.0.0.0",
            "0.1.2.3",
            "64:ff9b::a00:1",
            "64:ff9b::8.8.8.8",
            "64:ff9b:1::a00:1",
            "2002:a00:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fd00:ec2::254",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "2001:2::1",
            "2001:10::1",
            "198.18.0.1",
        ] {
            let ip: IpAddr = blocked.parse().unwrap_or_else(|e| panic!("{blocked}: {e}"));
            assert!(!none.permits(ip), "{blocked} permitted");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
            "2a00:1450:4001:80b::200e",
        ] {
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
        // Restricted: the listed networks only, public addresses refused.
        let only = AllowList::parse(&["127.0.0.0/8".to_owned()]).unwrap().restricted(true);
        assert!(only.permits(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(!only.permits("1.1.1.1".parse().unwrap()));
        assert!(!only.permits("2606:4700:4700::1111".parse().unwrap()));
        assert!(
            allow.permits("1.1.1.1".parse().unwrap()),
            "unrestricted lists add to the public internet"
        );
        assert!(AllowList::parse(&["nonsense".to_owned()]).is_err());
    }

    /// The guard is the HTTP client's resolver: the client connects only to
    /// the addresses it returns, the ones it checked (no second lookup that
    /// a rebinding DNS server could answer differently).
    #[tokio::test]
    async fn the_resolver_hands_the_client_only_checked_addresses() {
        let name = || "localhost".parse::<Name>().unwrap();
        let open = GuardedResolver::new(AllowList::parse(&["127.0.0.0/8".to_owned()]).unwrap());
        let addresses: Vec<SocketAddr> = open.resolve(name()).await.unwrap().collect();
        assert!(!addresses.is_empty());
        assert!(
            addresses.iter().all(|a| a.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addresses:?}"
        );
        let closed = GuardedResolver::new(AllowList::default());
        let refused = match closed.resolve(name()).await {
            Ok(addresses) => panic!("resolved to {:?}", addresses.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(refused.contains("blocked by the SSRF guard"), "{refused}");
    }
}
