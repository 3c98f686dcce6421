//! The SSRF guard for outgoing webhooks: an integrator's endpoint URL must
//! not reach Mage's own network (loopback, private ranges, link-local, CGNAT,
//! cloud metadata). A URL is checked when the endpoint is saved, and its host
//! is resolved and checked again at every delivery by the delivery client's
//! resolver, which hands the HTTP client only the addresses it checked, so a
//! name that changes its answer after the first check (DNS rebinding) gains
//! nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use ipnet::{Ipv4Net, Ipv6Net};
use thiserror::Error;
use url::{Host, Url};

/// A lookup slower than this fails: saving an endpoint waits for it, and a
/// delivery has 10 s in all.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default)]
pub struct UrlPolicy {
    /// Plain `http` endpoints (`mage dev`).
    pub allow_http: bool,
    /// Every address is allowed (`MAGE_WEBHOOKS_ALLOW_PRIVATE=true`, for
    /// development and tests).
    pub allow_private: bool,
    /// Resolve through this DNS server (UDP) instead of the system's.
    pub nameserver: Option<SocketAddr>,
}

/// Why an endpoint URL is refused; each message is one line meant for the
/// integrator who entered the URL.
#[derive(Debug, Clone, Error)]
pub enum Refused {
    #[error("not a valid URL: {0}")]
    NotUrl(url::ParseError),
    #[error("the URL has no host")]
    NoHost,
    #[error("a user name or password is not allowed in the URL")]
    Userinfo,
    #[error("the URL scheme must be {expected}, not {found}")]
    Scheme { found: String, expected: &'static str },
    #[error("{ip} is a {class} address, which webhooks may not reach")]
    ForbiddenIp { ip: IpAddr, class: &'static str },
    #[error("{host} resolves to {ip}, a {class} address, which webhooks may not reach")]
    Forbidden { host: String, ip: IpAddr, class: &'static str },
    #[error("cannot resolve {host}: {reason}")]
    Unresolvable { host: String, reason: String },
}

/// Checks endpoint URLs and resolves their hosts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Guard(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    policy: UrlPolicy,
    dns: Dns,
}

#[derive(Debug)]
enum Dns {
    /// getaddrinfo through tokio: the answers every other process on the
    /// machine gets (/etc/hosts, nsswitch, the container's resolver), with no
    /// resolv.conf parsing of our own to drift from the system's.
    System,
    Server(Box<TokioResolver>),
    /// The resolver could not be built; every lookup fails with this reason.
    Broken(String),
}

impl Guard {
    pub fn new(policy: UrlPolicy) -> Self {
        let dns = match policy.nameserver {
            None => Dns::System,
            Some(addr) => match server_resolver(addr) {
                Ok(r) => Dns::Server(Box::new(r)),
                Err(e) => {
                    tracing::warn!(nameserver = %addr, error = %e, "cannot build the webhook DNS resolver");
                    Dns::Broken(e.to_string())
                }
            },
        };
        Self(Arc::new(Inner { policy, dns }))
    }

    pub fn policy(&self) -> &UrlPolicy {
        &self.0.policy
    }

    /// Checks what can be checked without DNS: syntax, scheme, a host, no
    /// credentials, and an IP-literal host's address.
    pub fn parse(&self, raw: &str) -> Result<Url, Refused> {
        let url = Url::parse(raw).map_err(Refused::NotUrl)?;
        let policy = &self.0.policy;
        match url.scheme() {
            "https" => {}
            "http" if policy.allow_http => {}
            other => {
                let expected = if policy.allow_http { "https or http" } else { "https" };
                return Err(Refused::Scheme { found: other.to_owned(), expected });
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused::Userinfo);
        }
        let ip = match url.host() {
            None => return Err(Refused::NoHost),
            Some(Host::Domain(_)) => None,
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        };
        if let Some(ip) = ip
            && !policy.allow_private
            && let Some(class) = forbidden(ip)
        {
            return Err(Refused::ForbiddenIp { ip, class });
        }
        Ok(url)
    }

    /// The addresses to connect to for `host`. Unless private addresses are
    /// allowed, a name with any forbidden answer is refused whole: mixing
    /// public and private answers is how rebinding is attempted.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        let allow_private = self.0.policy.allow_private;
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            if !allow_private && let Some(class) = forbidden(ip) {
                return Err(Refused::ForbiddenIp { ip, class });
            }
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let unresolvable = |reason: String| Refused::Unresolvable { host: host.to_owned(), reason };
        let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, self.lookup(host, port))
            .await
            .map_err(|_| unresolvable(format!("no answer within {} s", RESOLVE_TIMEOUT.as_secs())))?
            .map_err(unresolvable)?;
        if addrs.is_empty() {
            return Err(unresolvable("no addresses".to_owned()));
        }
        if !allow_private
            && let Some((ip, class)) = addrs.iter().find_map(|a| forbidden(a.ip()).map(|c| (a.ip(), c)))
        {
            return Err(Refused::Forbidden { host: host.to_owned(), ip, class });
        }
        Ok(addrs)
    }

    /// `parse` then `resolve`: the check when an endpoint is created or
    /// updated.
    pub async fn check(&self, raw: &str) -> Result<Url, Refused> {
        let url = self.parse(raw)?;
        if let Some(Host::Domain(host)) = url.host() {
            self.resolve(host, url.port_or_known_default().unwrap_or(443)).await?;
        }
        Ok(url)
    }

    async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        match &self.0.dns {
            Dns::System => tokio::net::lookup_host((host, port))
                .await
                .map(|addrs| addrs.collect())
                .map_err(|e| e.to_string()),
            Dns::Server(resolver) => {
                // Fully qualified, so no search domain is tried.
                let fqdn = if host.ends_with('.') { host.to_owned() } else { format!("{host}.") };
                match resolver.lookup_ip(fqdn).await {
                    Ok(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect()),
                    Err(e) if e.is_nx_domain() => Err("no such domain".to_owned()),
                    Err(e) if e.is_no_records_found() => Err("no addresses".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Dns::Broken(reason) => Err(reason.clone()),
        }
    }
}

fn server_resolver(addr: SocketAddr) -> Result<TokioResolver, hickory_resolver::net::NetError> {
    let mut server = NameServerConfig::udp(addr.ip());
    for c in &mut server.connections {
        c.port = addr.port();
    }
    let mut builder = TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![server]),
        TokioRuntimeProvider::default(),
    );
    // The chosen server is the only authority: /etc/hosts would answer
    // `localhost` behind its back.
    builder.options_mut().use_hosts_file = ResolveHosts::Never;
    builder.build()
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(segments: [u16; 8], len: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

const FORBIDDEN_V4: [(Ipv4Net, &str); 11] = [
    (v4(0, 0, 0, 0, 8), "this-network"),
    (v4(10, 0, 0, 0, 8), "private"),
    (v4(100, 64, 0, 0, 10), "CGNAT"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 0, 0, 16), "link-local"),
    (v4(172, 16, 0, 0, 12), "private"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignment"),
    (v4(192, 168, 0, 0, 16), "private"),
    (v4(198, 18, 0, 0, 15), "benchmarking"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved"),
];

const FORBIDDEN_V6: [(Ipv6Net, &str); 7] = [
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    // Local-use NAT64 (RFC 8215) translates to whatever the operator chose.
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), "local-use NAT64"),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique local"),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "site-local"),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// Instance metadata services (AWS, GCP, Azure; Oracle; Alibaba; AWS over
/// IPv6), named for what they are; their ranges are refused anyway.
const METADATA: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// The class of address a webhook may not reach, or `None` for a public one.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    if METADATA.contains(&ip) {
        return Some("cloud metadata");
    }
    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => {
            if let Some(class) = FORBIDDEN_V6.iter().find(|(net, _)| net.contains(&ip)).map(|(_, c)| *c) {
                return Some(class);
            }
            embedded_v4(ip).and_then(|v4| forbidden(IpAddr::V4(v4)))
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_broadcast() {
        return Some("broadcast");
    }
    FORBIDDEN_V4.iter().find(|(net, _)| net.contains(&ip)).map(|(_, c)| *c)
}

/// The IPv4 address an IPv6 one stands for, where packets to it end up at
/// that IPv4 address: mapped (::ffff:0:0/96), the deprecated compatible form
/// (::/96), well-known NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => {
            Some(low)
        }
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(ip: &str) -> Option<&'static str> {
        forbidden(ip.parse().expect("test address"))
    }

    #[test]
    fn every_forbidden_ipv4_class() {
        for (ip, expected) in [
            ("0.0.0.0", "this-network"),
            ("0.1.2.3", "this-network"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.254", "private"),
            ("192.168.1.1", "private"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("169.254.0.1", "link-local"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.169.253", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("100.100.100.200", "cloud metadata"),
            ("192.0.0.8", "IETF protocol assignment"),
            ("192.0.0.192", "cloud metadata"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.254", "reserved"),
            ("255.255.255.255", "broadcast"),
        ] {
            assert_eq!(class(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn every_forbidden_ipv6_class() {
        for (ip, expected) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("64:ff9b:1::a00:1", "local-use NAT64"),
        ] {
            assert_eq!(class(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn ipv6_embedding_ipv4_is_judged_by_the_ipv4() {
        for (ip, expected) in [
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:10.1.2.3", Some("private")),
            ("::ffff:169.254.169.254", Some("cloud metadata")),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some("loopback")),
            ("::192.168.0.1", Some("private")),
            ("64:ff9b::7f00:1", Some("loopback")),
            ("64:ff9b::a9fe:a9fe", Some("cloud metadata")),
            ("64:ff9b::100.64.0.1", Some("CGNAT")),
            ("64:ff9b::808:808", None),
            ("2002:7f00:1::", Some("loopback")),
            ("2002:c0a8:101::1", Some("private")),
            ("2002:a9fe:a9fe:1::1", Some("cloud metadata")),
            ("2002:808:808::1", None),
        ] {
            assert_eq!(class(ip), expected, "{ip}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.255.255",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001::1",
        ] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }

    fn guard(allow_http: bool, allow_private: bool) -> Guard {
        Guard::new(UrlPolicy { allow_http, allow_private, nameserver: None })
    }

    #[test]
    fn parse_accepts_https_and_refuses_the_rest() {
        let strict = guard(false, false);
        let url = strict.parse("https://hooks.example.com:8443/mage?x=1").expect("a good URL");
        assert_eq!(url.host_str(), Some("hooks.example.com"));
        assert_eq!(url.port(), Some(8443));

        assert!(matches!(strict.parse("not a url"), Err(Refused::NotUrl(_))));
        assert!(matches!(strict.parse("https://"), Err(Refused::NotUrl(_))));
        assert!(matches!(
            strict.parse("http://hooks.example.com/"),
            Err(Refused::Scheme { expected: "https", .. })
        ));
        assert!(matches!(strict.parse("ftp://hooks.example.com/"), Err(Refused::Scheme { .. })));
        assert!(matches!(strict.parse("file:///etc/passwd"), Err(Refused::Scheme { .. })));
        assert!(matches!(strict.parse("https://user:pw@hooks.example.com/"), Err(Refused::Userinfo)));
        assert!(matches!(strict.parse("https://user@hooks.example.com/"), Err(Refused::Userinfo)));

        let dev = guard(true, false);
        assert!(dev.parse("http://hooks.example.com/").is_ok());
        assert!(matches!(
            dev.parse("ftp://hooks.example.com/"),
            Err(Refused::Scheme { expected: "https or http", .. })
        ));
    }

    #[test]
    fn parse_checks_ip_literal_hosts() {
        let strict = guard(false, false);
        for raw in [
            "https://127.0.0.1/",
            "https://10.0.0.1:8443/x",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[fd00:ec2::254]/",
            // Spellings the URL standard turns into 127.0.0.1.
            "https://2130706433/",
            "https://0x7f.1/",
            "https://127.1/",
        ] {
            assert!(matches!(strict.parse(raw), Err(Refused::ForbiddenIp { .. })), "{raw}");
        }
        assert!(strict.parse("https://8.8.8.8/").is_ok());
        assert!(strict.parse("https://[2606:4700:4700::1111]/").is_ok());
        assert!(guard(false, true).parse("https://127.0.0.1/").is_ok());
    }

    #[test]
    fn messages_are_one_line_and_name_the_problem() {
        let err = guard(false, false).parse("https://169.254.169.254/").expect_err("metadata is refused");
        assert_eq!(
            err.to_string(),
            "169.254.169.254 is a cloud metadata address, which webhooks may not reach"
        );
        let err = Refused::Forbidden {
            host: "evil.test".into(),
            ip: "10.0.0.1".parse().expect("ip"),
            class: "private",
        };
        assert_eq!(
            err.to_string(),
            "evil.test resolves to 10.0.0.1, a private address, which webhooks may not reach"
        );
    }

    #[tokio::test]
    async fn names_resolving_to_forbidden_addresses_are_refused() {
        // Through the system resolver: `localhost` comes from /etc/hosts.
        let strict = guard(false, false);
        assert!(matches!(strict.check("https://localhost/").await, Err(Refused::Forbidden { .. })));
        assert!(matches!(strict.resolve("127.0.0.1", 80).await, Err(Refused::ForbiddenIp { .. })));
        assert!(matches!(strict.resolve("[::1]", 80).await, Err(Refused::ForbiddenIp { .. })));
        let lax = guard(false, true);
        let addrs = lax.resolve("localhost", 8080).await.expect("localhost resolves");
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 8080));
    }
}
