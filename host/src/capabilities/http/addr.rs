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
/// (100.64/10), benchmarking (198.18/15), the 6to4 relay anycast
/// (192.88.99/24), unique-local (fc00::/7, incl. AWS's fd00:ec2::254),
/// site-local (fec0::/10), local-use NAT64 (64:ff9b:1::/48), unspecified,
/// multicast, broadcast and documentation ranges are not. An IPv6 address
/// that carries an IPv4 one (IPv4-mapped `::ffff:0:0/96`, NAT64
/// `64:ff9b::/96`, 6to4 `2002::/16`) is public only when that IPv4 address
/// is: `64:ff9b::7f00:1` reaches 127.0.0.1 through a NAT64 gateway.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b & 0xfe) == 18)
        || (a == 192 && b == 88 && c == 99)
        || a >= 240)
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped
/// (`::ffff:a.b.c.d`), NAT64 well-known prefix (`64:ff9b::a.b.c.d`) or
/// 6to4 (`2002:AABB:CCDD::/48`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        _ => None,
    }
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0])
        // ::/16: IPv4-compatible, IPv4-translated (::ffff:0:a.b.c.d) and
        // other reserved forms; nothing public lives there.
        || s[0] == 0)
}

/// True when dialling `dest` could reach this host's own admin API at
/// `admin`: the admin port on the admin address, on any loopback or
/// unspecified address (connecting to 0.0.0.0 reaches this machine), or on
/// any address of this machine's interfaces (an admin API listening on
/// 0.0.0.0 answers on every one).
pub fn reaches_admin(dest: SocketAddr, admin: SocketAddr) -> bool {
    if dest.port() != admin.port() {
        return false;
    }
    let ip = dest.ip().to_canonical();
    if ip.is_unspecified() || ip.is_loopback() || ip == admin.ip().to_canonical() {
        return true;
    }
    local_addresses().iter().any(|local| local.to_canonical() == ip)
}

/// Every address of this machine's network interfaces (empty if the list
/// cannot be read). Read at each check: DHCP may change them.
fn local_addresses() -> Vec<IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that is freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut node = list;
    while !node.is_null() {
        // SAFETY: `node` is an element of the list getifaddrs returned, which
        // stays valid until freeifaddrs.
        let entry = unsafe { &*node };
        // SAFETY: a non-null ifa_addr points to a sockaddr of the family it
        // names, as getifaddrs(3) documents.
        if let Some(ip) = unsafe { sockaddr_ip(entry.ifa_addr) } {
            found.push(ip);
        }
        node = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// The IP address in `addr`, for AF_INET and AF_INET6.
///
/// # Safety
/// `addr` is null or points to a valid sockaddr of the family it names.
unsafe fn sockaddr_ip(addr: *const libc::sockaddr) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: guaranteed by the caller.
    match i32::from(unsafe { (*addr).sa_family }) {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let v4 = unsafe { &*addr.cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let v6 = unsafe { &*addr.cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
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
    #[error("{host} resolves to {addr}, the host's own admin API, which no guest may reach whatever its grants")]
    Admin { host: String, addr: SocketAddr },
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

/// [`resolve`] for a guest: also refuses any address that reaches the
/// host's own admin API at `admin` (see [`reaches_admin`]).
pub async fn resolve_for_guest(
    host: &str,
    port: u16,
    settings: &super::HttpSettings,
    private_ok: bool,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let addrs = resolve(host, port, &settings.resolve, private_ok).await?;
    if let Some(admin) = settings.admin
        && let Some(bad) = addrs.iter().find(|a| reaches_admin(**a, admin))
    {
        return Err(ResolveError::Admin { host: host.into(), addr: *bad });
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

    #[test]
    fn nat64_6to4_benchmarking_relay_and_site_local_ranges_are_not_public() {
        for ip in [
            "198.18.0.1",
            "198.19.255.254",
            "192.88.99.1",
            "fec0::1",
            "feff::1",
            "64:ff9b:1::1",
            "64:ff9b:1:ffff::8.8.8.8",
            "::ffff:0:127.0.0.1",
            "::ffff:0:8.8.8.8",
            "::8.8.8.8",
            "100::1",
        ] {
            assert!(!public(ip), "{ip} must not count as public");
        }
        // Addresses carrying an IPv4 address are as public as that address.
        for (ip, is) in [
            ("64:ff9b::127.0.0.1", false),
            ("64:ff9b::10.0.0.1", false),
            ("64:ff9b::169.254.169.254", false),
            ("64:ff9b::8.8.8.8", true),
            ("2002:7f00:1::1", false),
            ("2002:c0a8:101::1", false),
            ("2002:0808:0808::1", true),
            ("::ffff:198.18.0.1", false),
            ("::ffff:1.1.1.1", true),
        ] {
            assert_eq!(public(ip), is, "{ip}");
        }
        for ip in ["198.17.255.255", "198.20.0.1", "192.88.98.1", "2001:4860:4860::8888"] {
            assert!(public(ip), "{ip} is public");
        }
    }

    #[test]
    fn the_admin_port_is_unreachable_on_every_local_address() {
        let admin: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9100".parse().unwrap();
        for dest in
            ["127.0.0.1:9100", "0.0.0.0:9100", "[::]:9100", "[::1]:9100", "[::ffff:127.0.0.1]:9100", "127.1.2.3:9100"]
        {
            let dest: SocketAddr = dest.parse().unwrap();
            assert!(reaches_admin(dest, admin), "{dest} reaches {admin}");
            assert!(reaches_admin(dest, any), "{dest} reaches {any}");
        }
        for local in local_addresses() {
            assert!(reaches_admin(SocketAddr::new(local, 9100), any), "{local} is this machine's");
        }
        assert!(!reaches_admin("127.0.0.1:9101".parse().unwrap(), admin));
        assert!(!reaches_admin("93.184.216.34:9100".parse().unwrap(), any));
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
