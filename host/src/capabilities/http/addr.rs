//! Which resolved addresses a guest may reach without an explicitly private
//! grant, and name resolution that yields the exact addresses we then dial.
//!
//! Resolving here (rather than letting a client library resolve again when it
//! connects) is what makes the check meaningful: a name whose DNS answer
//! changes between check and connect (DNS rebinding) cannot slip through.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// True when `ip` is a public unicast address. Loopback, RFC 1918 private,
/// link-local (incl. the 169.254.169.254 metadata service), CGNAT
/// (100.64/10), unique-local (fc00::/7, incl. AWS's fd00:ec2::254),
/// unspecified, multicast, broadcast and documentation ranges are not.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        || (first == 0 && ip.to_ipv4().is_some_and(|v4| !is_public_v4(v4))))
}

/// Why a destination could not be resolved or may not be reached.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("cannot resolve {host}: {message}")]
    Lookup { host: String, message: String },
    #[error(
        "{host} resolves to the non-public address {ip}; only a grant naming it as an IP literal, `localhost` or with the `private:` prefix may reach it"
    )]
    Private { host: String, ip: IpAddr },
}

/// The addresses to dial for `host:port`: an IP literal as is, a static
/// `[host] resolve` override, or the system resolver. Every address must be
/// public unless `private_ok`.
pub async fn resolve(
    host: &str,
    port: u16,
    overrides: &BTreeMap<String, IpAddr>,
    private_ok: bool,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let addrs: Vec<SocketAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else if let Some(ip) = overrides.get(host) {
        vec![SocketAddr::new(*ip, port)]
    } else {
        let lookup = tokio::net::lookup_host((host, port)).await;
        let found = lookup.map_err(|e| ResolveError::Lookup { host: host.into(), message: e.to_string() })?;
        found.collect()
    };
    if addrs.is_empty() {
        return Err(ResolveError::Lookup { host: host.into(), message: "no addresses".into() });
    }
    if !private_ok && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(ResolveError::Private { host: host.into(), ip: bad.ip() });
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn non_public_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!public(ip), "{ip} must not count as public");
        }
        for ip in ["1.1.1.1", "93.184.216.34", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(public(ip), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn overrides_are_checked_too() {
        let overrides = BTreeMap::from([("api.test".to_string(), "127.0.0.1".parse().unwrap())]);
        let err = resolve("api.test", 443, &overrides, false).await.unwrap_err();
        assert!(matches!(err, ResolveError::Private { .. }), "{err}");
        let ok = resolve("api.test", 443, &overrides, true).await.unwrap();
        assert_eq!(ok, vec!["127.0.0.1:443".parse().unwrap()]);
        assert!(resolve("::1", 80, &BTreeMap::new(), false).await.is_err());
    }
}
