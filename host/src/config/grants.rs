//! The grant grammar for outbound HTTP (`grants.http` and the host lists of
//! `grants.secrets`) and the destination a request is checked against.
//!
//! Config applies it once, at load ([`super::Grants`] holds the parsed
//! entries); the HTTP gate in `capabilities::http` only matches requests
//! against them, so `wattedge check` and the gate cannot disagree.

/// Prefix that marks a grant entry as allowed to reach private addresses.
pub const PRIVATE_PREFIX: &str = "private:";

/// One grant entry: `host`, `host:port`, `scheme://host[:port]`, each
/// optionally prefixed with `private:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGrant {
    pub scheme: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// True when the destination may resolve to a loopback, private,
    /// link-local or metadata address: the entry is `private:`-marked, an IP
    /// literal, or `localhost`.
    pub private: bool,
}

/// Where a request goes, from the request URI (never from a `Host` header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Destination {
    /// The destination of `uri`; the scheme defaults to https like wasi:http's.
    /// A target whose path does not start with `/` (wasi:http lets a guest
    /// set `?x=1` as its whole path-with-query) is refused here, before
    /// anything is sent.
    pub fn of(uri: &http::Uri) -> Result<Destination, String> {
        if let Some(target) = uri.path_and_query().map(|p| p.as_str()).filter(|t| !t.starts_with('/')) {
            return Err(format!("the request path {target:?} does not start with '/'"));
        }
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let host = uri.host().ok_or("the request URI has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if scheme == "http" { 80 } else { 443 });
        Ok(Destination { scheme, host, port })
    }

    /// The `Host` header value for this destination.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default = if self.scheme == "http" { 80 } else { 443 };
        if self.port == default { host } else { format!("{host}:{}", self.port) }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "{}://{host}:{}", self.scheme, self.port)
    }
}

impl HostGrant {
    /// Parses a grant entry; the error says what form is expected.
    pub fn parse(entry: &str) -> Result<HostGrant, String> {
        let (marked, body) = match entry.strip_prefix(PRIVATE_PREFIX) {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        let (scheme, rest) = match body.split_once("://") {
            Some((s, r)) if s == "http" || s == "https" => (Some(s.to_string()), r),
            Some((s, _)) => return Err(format!("scheme {s:?} in {entry:?} is not http or https")),
            None => (None, body),
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') || rest.contains(char::is_whitespace) {
            return Err(format!(
                "{entry:?} is not a host, host:port or scheme://host[:port] (optionally prefixed with \"private:\")"
            ));
        }
        let (host, port) = split_port(rest, entry)?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let private = marked || host == "localhost" || host.parse::<std::net::IpAddr>().is_ok();
        Ok(HostGrant { scheme, host, port, private })
    }

    /// True when a request to `dest` is covered by this grant.
    pub fn allows(&self, dest: &Destination) -> bool {
        self.host == dest.host
            && self.port.is_none_or(|p| p == dest.port)
            && self.scheme.as_deref().is_none_or(|s| s == dest.scheme)
    }
}

fn split_port<'a>(rest: &'a str, entry: &str) -> Result<(&'a str, Option<u16>), String> {
    if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner.split_once(']').ok_or_else(|| format!("{entry:?} has an unclosed '['"))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, Some(p.parse().map_err(|_| format!("port {p:?} in {entry:?} is not a number"))?))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("{entry:?} is not [IPv6]:port")),
        };
    }
    let bare_ipv6 = rest.matches(':').count() > 1;
    match rest.rsplit_once(':') {
        Some((h, p)) if !bare_ipv6 => {
            let port = p.parse::<u16>().map_err(|_| format!("port {p:?} in {entry:?} is not a number"))?;
            Ok((h, Some(port)))
        }
        _ => Ok((rest, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(scheme: &str, host: &str, port: u16) -> Destination {
        Destination { scheme: scheme.into(), host: host.into(), port }
    }

    #[test]
    fn grants_parse_and_match() {
        let g = HostGrant::parse("api.watttime.org").unwrap();
        assert!(g.allows(&dest("https", "api.watttime.org", 443)));
        assert!(g.allows(&dest("http", "api.watttime.org", 8080)));
        assert!(!g.allows(&dest("https", "evil.example", 443)));
        assert!(!g.private);
        let g = HostGrant::parse("https://localhost:9999").unwrap();
        assert!(g.allows(&dest("https", "localhost", 9999)));
        assert!(!g.allows(&dest("http", "localhost", 9999)));
        assert!(!g.allows(&dest("https", "localhost", 443)));
        assert!(g.private, "localhost is explicitly private");
        assert!(HostGrant::parse("ftp://x").is_err());
        assert!(HostGrant::parse("host/path").is_err());
        assert!(HostGrant::parse("host:notaport").is_err());
    }

    #[test]
    fn private_marks_and_ip_literals() {
        let g = HostGrant::parse("private:https://nas.lan:8123").unwrap();
        assert!(g.private && g.allows(&dest("https", "nas.lan", 8123)));
        assert!(HostGrant::parse("192.168.1.5:8086").unwrap().private);
        let g = HostGrant::parse("[::1]:8443").unwrap();
        assert!(g.private && g.allows(&dest("https", "::1", 8443)));
        assert_eq!(HostGrant::parse("fd00::1").unwrap().port, None);
        assert_eq!(HostGrant::parse("[::1]").unwrap().host, "::1");
        assert!(HostGrant::parse("[::1").is_err());
    }

    #[test]
    fn destination_from_uri() {
        let d = Destination::of(&"https://API.example.org/x?y".parse().unwrap()).unwrap();
        assert_eq!(d, dest("https", "api.example.org", 443));
        assert_eq!(d.authority(), "api.example.org");
        let d = Destination::of(&"http://[::1]:81/".parse().unwrap()).unwrap();
        let query_only = http::Uri::builder().scheme("http").authority("a.test").path_and_query("?x=1").build();
        let refused = Destination::of(&query_only.unwrap()).unwrap_err();
        assert!(refused.contains("does not start with '/'"), "{refused}");
        assert_eq!((d.host.as_str(), d.authority()), ("::1", "[::1]:81".to_string()));
    }
}
