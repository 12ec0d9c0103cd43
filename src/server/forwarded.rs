//! Who a request comes from: the TCP peer, or, when the peer is a proxy the
//! operator trusts (`PULSE_TRUSTED_PROXIES`), the client it forwards for.
//!
//! The standard `Forwarded` header (RFC 7239: `for=`, `host=`, `proto=`, in
//! one element per hop) and the older `X-Forwarded-For`, `X-Forwarded-Host`
//! and `X-Forwarded-Proto` are headers any client can write, so they are
//! read only from trusted peers; from anyone else they are ignored. Both are
//! read by one rule: the client is the rightmost hop that is not itself a
//! trusted proxy. `Forwarded` wins when a trusted peer sends both.
//! Per-address limits, the WebSocket origin check and the cookie's `Secure`
//! flag all use the result.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap};
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

/// Who sent a request, as far as the server can tell. Every request carries
/// one in its extensions (put there by the listener).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the peer's, or the one a trusted proxy forwards.
    pub ip: IpAddr,
    /// The host the client asked for (`Host`, or a trusted proxy's
    /// `X-Forwarded-Host`), port included when it is not the default.
    pub host: Option<String>,
    /// Whether the client reached us over HTTPS (only a trusted proxy can say so).
    pub https: bool,
    /// Whether the peer is a trusted proxy.
    pub via_proxy: bool,
}

impl TrustedProxies {
    /// The proxies in `blocks` (single addresses are /32 or /128 blocks).
    pub fn new(blocks: Vec<IpNet>) -> Self {
        TrustedProxies(blocks)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind a request that arrived from `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Client {
        let peer = peer.to_canonical();
        let own_host = || header_str(headers, header::HOST.as_str()).map(str::to_string);
        if !self.contains(peer) {
            return Client {
                ip: peer,
                host: own_host(),
                https: false,
                via_proxy: false,
            };
        }
        if let Some(client) = self.forwarded(headers) {
            return Client {
                ip: client.ip.unwrap_or(peer),
                host: client.host.or_else(own_host),
                https: client.https,
                via_proxy: true,
            };
        }
        Client {
            ip: self.forwarded_for(headers).unwrap_or(peer),
            host: header_str(headers, "x-forwarded-host")
                .and_then(|h| h.split(',').next())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .or_else(own_host),
            https: header_str(headers, "x-forwarded-proto")
                .and_then(|p| p.split(',').next())
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("https")),
            via_proxy: true,
        }
    }

    /// What a `Forwarded` header (all its lines, each hop an element) says
    /// of the client: the rightmost element whose `for` is not a trusted
    /// proxy, with that element's `host` and `proto` (written by the proxy
    /// that spoke to the client). `None` without the header; an `ip` of
    /// `None` when no usable address comes before a garbled or hidden
    /// (`unknown`, obfuscated) one.
    fn forwarded(&self, headers: &HeaderMap) -> Option<Hop> {
        let lines: Vec<&str> = headers
            .get_all(header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if lines.is_empty() {
            return None;
        }
        let elements: Vec<_> = lines.iter().flat_map(|l| rfc7239::parse(l)).collect();
        for element in elements.iter().rev() {
            let ip = match element {
                Ok(element) => element
                    .forwarded_for
                    .as_ref()
                    .and_then(|node| node.ip())
                    .map(|ip| ip.to_canonical()),
                Err(_) => None,
            };
            // Garbled or hidden by a trusted hop: believe nothing further.
            let (Some(ip), Ok(element)) = (ip, element) else {
                return Some(Hop::default());
            };
            if !self.contains(ip) {
                let unquote = |v: &str| v.trim_matches('"').trim().to_string();
                return Some(Hop {
                    ip: Some(ip),
                    host: element.host.map(unquote).filter(|h| !h.is_empty()),
                    https: element
                        .protocol
                        .is_some_and(|p| unquote(p).eq_ignore_ascii_case("https")),
                });
            }
        }
        Some(Hop::default())
    }

    /// The client address in `X-Forwarded-For`: the rightmost entry that is
    /// not itself a trusted proxy. Entries to its left were written by the
    /// client or by proxies nobody vouches for, so they are never used.
    fn forwarded_for(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for entry in entries.iter().rev() {
            // A garbled entry written by a trusted hop: believe nothing further.
            let ip = parse_addr(entry.trim())?;
            if !self.contains(ip) {
                return Some(ip);
            }
        }
        None
    }
}

/// What a trusted proxy's `Forwarded` header says of the client.
#[derive(Default)]
struct Hop {
    /// The client's address.
    ip: Option<IpAddr>,
    /// The host it asked for.
    host: Option<String>,
    /// Whether it spoke HTTPS.
    https: bool,
}

/// Whether `origin` (a browser's `Origin` header) is the site the client
/// asked for: same host and port as `host` (the request's, or a trusted
/// proxy's `X-Forwarded-Host`), over HTTP or HTTPS.
pub fn is_own_origin(origin: &str, host: Option<&str>) -> bool {
    let origin = origin.trim_end_matches('/');
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    origin_host.is_some() && origin_host == host
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:80`.
fn parse_addr(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn forwarding_headers_are_ignored_from_untrusted_peers() {
        let p = proxies(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "9.9.9.9"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("host", "pulse.example:8080"),
        ]);
        let c = p.client("203.0.113.7".parse().unwrap(), &h);
        assert_eq!(c.ip, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(c.host.as_deref(), Some("pulse.example:8080"));
        assert!(!c.https && !c.via_proxy);
    }

    #[test]
    fn the_rightmost_untrusted_forwarded_address_is_the_client() {
        let p = proxies(&["10.0.0.0/8", "127.0.0.1/32"]);
        // The client wrote "1.1.1.1" itself; nginx appended the real peer.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1, 198.51.100.4"),
            ("x-forwarded-for", "10.1.2.3"),
            ("x-forwarded-host", "pulse.example:8443"),
            ("x-forwarded-proto", "https"),
        ]);
        let c = p.client("127.0.0.1".parse().unwrap(), &h);
        assert_eq!(c.ip, "198.51.100.4".parse::<IpAddr>().unwrap());
        assert_eq!(c.host.as_deref(), Some("pulse.example:8443"));
        assert!(c.https && c.via_proxy);
        // Ports and brackets, and IPv4-mapped peers.
        let h = headers(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        let c = p.client("::ffff:127.0.0.1".parse().unwrap(), &h);
        assert_eq!(c.ip, "2001:db8::1".parse::<IpAddr>().unwrap());
        // No header, or garbage from the proxy: the peer itself.
        let c = p.client("10.9.9.9".parse().unwrap(), &headers(&[]));
        assert_eq!(c.ip, "10.9.9.9".parse::<IpAddr>().unwrap());
        let h = headers(&[("x-forwarded-for", "1.1.1.1, nonsense")]);
        let c = p.client("10.9.9.9".parse().unwrap(), &h);
        assert_eq!(c.ip, "10.9.9.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_forwarded_header_follows_the_same_rules() {
        let p = proxies(&["10.0.0.0/8", "127.0.0.1/32"]);
        // Several elements over two lines: the client wrote the first itself;
        // the proxy that spoke to the client wrote the second; another
        // trusted proxy the third.
        let h = headers(&[
            ("forwarded", "for=1.1.1.1;host=evil.example;proto=https"),
            (
                "forwarded",
                "for=\"[2001:db8::7]:4711\";host=\"pulse.example:8443\";proto=https, for=10.1.2.3",
            ),
            ("x-forwarded-for", "9.9.9.9"),
        ]);
        let c = p.client("127.0.0.1".parse().unwrap(), &h);
        assert_eq!(c.ip, "2001:db8::7".parse::<IpAddr>().unwrap());
        assert_eq!(c.host.as_deref(), Some("pulse.example:8443"));
        assert!(c.https && c.via_proxy);
        // IPv4 with a port, quoted IPv6 without one, and plain HTTP.
        let h = headers(&[("forwarded", "for=198.51.100.4:5000;proto=http")]);
        let c = p.client("10.0.0.1".parse().unwrap(), &h);
        assert_eq!(c.ip, "198.51.100.4".parse::<IpAddr>().unwrap());
        assert!(!c.https);
        let h = headers(&[("forwarded", "for=\"[2001:db8::9]\"")]);
        let c = p.client("10.0.0.1".parse().unwrap(), &h);
        assert_eq!(c.ip, "2001:db8::9".parse::<IpAddr>().unwrap());
        // Hidden or garbled by a trusted hop: the peer itself.
        for value in [
            "for=unknown",
            "for=_hidden",
            "nonsense",
            "for=1.1.1.1, for=bad",
        ] {
            let h = headers(&[("forwarded", value)]);
            let c = p.client("10.0.0.1".parse().unwrap(), &h);
            assert_eq!(c.ip, "10.0.0.1".parse::<IpAddr>().unwrap(), "{value}");
        }
        // From a peer nobody trusts: ignored.
        let h = headers(&[("forwarded", "for=1.2.3.4;proto=https;host=evil.example")]);
        let c = p.client("203.0.113.9".parse().unwrap(), &h);
        assert_eq!(c.ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert!(!c.https && !c.via_proxy);
    }
}
