//! Who is on the other end of a request: the client's IP address, for
//! per-client limits.
//!
//! It is the connection's peer, unless that peer is a proxy listed in
//! MAGE_TRUSTED_PROXIES: then `X-Forwarded-For` is read from the right (the
//! entry each trusted proxy appended), skipping further trusted proxies,
//! and the first address a trusted proxy did not add is the client. A
//! header sent by anyone else is ignored, so a client cannot choose the
//! address it is counted under.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap};
use ipnet::IpNet;

/// The client's `User-Agent`, in every GraphQL request's data: a new
/// session records it so its owner can tell their devices apart.
#[derive(Debug, Clone, Default)]
pub struct UserAgent(pub Option<String>);

impl UserAgent {
    pub fn of(headers: &HeaderMap) -> Self {
        Self(
            headers
                .get(axum::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(256).collect()),
        )
    }
}

/// The client's address, in every GraphQL request's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// A request that came with no peer address (not through `server`).
    pub const UNKNOWN: Self = Self(IpAddr::V4(Ipv4Addr::UNSPECIFIED));

    /// The client of a request the server accepted (`ConnectInfo` is set on
    /// every one by `server`); unspecified when there is none.
    pub fn of(extensions: &Extensions, headers: &HeaderMap, trusted: &[IpNet]) -> Self {
        match extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(peer) => Self(client_ip(peer.0.ip(), headers, trusted)),
            None => Self::UNKNOWN,
        }
    }

    /// The key limits count this client under: the address, or its /64 for
    /// IPv6, since one subscriber usually holds a whole /64.
    pub fn limit_key(&self) -> String {
        match self.0.to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        }
    }
}

fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&ip.to_canonical()));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return peer;
    }
    // Several headers are one list, in order.
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for entry in forwarded.iter().rev() {
        let Some(ip) = parse_entry(entry) else {
            // Garbage where a trusted proxy should have written an address:
            // the last address known good stands.
            return client;
        };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, possibly with a port
/// (`1.2.3.4:5678`, `[::1]:5678`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    entry.parse::<SocketAddr>().ok().map(|s| s.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().expect("header"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        assert_eq!(client_ip(ip("203.0.113.9"), &headers(&["1.2.3.4"]), &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("203.0.113.9"), &headers(&["1.2.3.4"]), &[]), ip("203.0.113.9"));
    }

    #[test]
    fn a_trusted_proxy_names_the_client_by_the_rightmost_untrusted_entry() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        // The client forged the first entry; the proxies appended the rest.
        let h = headers(&["6.6.6.6, 198.51.100.7", "10.0.0.3"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("198.51.100.7"));
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["[2001:db8::1]:443"]), &trusted), ip("2001:db8::1"));
        // Nothing forwarded: the proxy itself.
        assert_eq!(client_ip(ip("10.0.0.2"), &HeaderMap::new(), &trusted), ip("10.0.0.2"));
        assert_eq!(client_ip(ip("::ffff:10.0.0.2"), &headers(&["192.0.2.1"]), &trusted), ip("192.0.2.1"));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(ClientIp(ip("2001:db8:1:2:3:4:5:6")).limit_key(), "2001:db8:1:2::/64");
        assert_eq!(ClientIp(ip("192.0.2.1")).limit_key(), "192.0.2.1");
    }
}
