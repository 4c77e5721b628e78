//! What the admin server checks before it routes a request: that the
//! `Host` header names this server (DNS rebinding), and how many
//! connections it serves at once.
//!
//! DNS rebinding: a web page on `evil.example` whose name the attacker then
//! points at 127.0.0.1 makes the operator's browser talk to the admin API as
//! if it were evil.example, with `Host: evil.example:9100`. Refusing any
//! `Host` but this server's own names and addresses ends that. A Unix-socket
//! connection has no such attacker (no browser reaches it) and is not
//! checked.

use std::net::SocketAddr;

use hyper::StatusCode;
use hyper::header::{self, HeaderMap};

use super::Resp;
use super::routes::error_json;

/// Most TCP connections served at once; more are answered 503 and closed.
pub const MAX_TCP_CONNECTIONS: usize = 32;
/// Most Unix-socket connections (the local CLI) served at once: separate
/// from TCP, so a flood on the port cannot lock the CLI out.
pub const MAX_UNIX_CONNECTIONS: usize = 16;

/// The answer to a connection beyond the cap, written without waiting.
pub const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncache-control: no-store\r\nconnection: close\r\ncontent-length: 72\r\n\r\n{\"error\":\"too many connections to the admin API; try again in a moment\"}";

/// The `Host` values one TCP connection accepts.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    port: u16,
    /// Lowercase host names and IP literals (IPv6 in brackets), without port.
    names: Vec<String>,
}

impl AllowedHosts {
    /// For a connection that reached `local` on a server listening at
    /// `listen`: `localhost`, the loopback addresses, both addresses and
    /// this machine's host name (plain and `.local`), on `local`'s port.
    pub fn new(listen: SocketAddr, local: SocketAddr) -> AllowedHosts {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "[::1]".to_string()];
        for ip in [listen.ip(), local.ip(), local.ip().to_canonical()] {
            if !ip.is_unspecified() {
                names.push(match ip {
                    std::net::IpAddr::V4(v4) => v4.to_string(),
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                });
            }
        }
        if let Some(name) = host_name() {
            names.push(format!("{name}.local"));
            names.push(name);
        }
        AllowedHosts { port: local.port(), names }
    }

    /// Whether `host` (a `Host` header value) names this server: one of
    /// its names, with its port or none. The name is what defeats
    /// rebinding (the attacker's page has the attacker's name); a port,
    /// when given, must be ours too.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let Some((name, port)) = split_host_port(&host) else { return false };
        let name = name.strip_suffix('.').unwrap_or(name);
        self.names.iter().any(|n| n == name) && port.is_none_or(|p| p == self.port)
    }

    /// The refusal for a request whose `Host` is not this server's.
    pub fn refuse(&self, headers: &HeaderMap) -> Option<Resp> {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if host.is_some_and(|h| self.allows(h)) {
            return None;
        }
        let shown = host.map_or_else(|| "missing".to_string(), |h| format!("{:?}", crate::guest_text::cut(h, 100)));
        let message = format!(
            "the Host header ({shown}) does not name this admin server (DNS rebinding protection); use http://127.0.0.1:{}/ or this machine's address",
            self.port
        );
        Some(error_json(StatusCode::MISDIRECTED_REQUEST, &message))
    }
}

/// `name[:port]` or `[v6][:port]`; None when the port is not a number.
fn split_host_port(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let close = rest.find(']')? + 2;
            (&host[..close], host[close..].strip_prefix(':'))
        }
        None => match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    match port {
        Some(p) => Some((name, Some(p.parse().ok()?))),
        None if name.len() == host.len() => Some((name, None)),
        None => None,
    }
}

/// This machine's host name, lowercase.
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let len = buf.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&buf[..len]).ok()?.to_ascii_lowercase();
    (ok && !name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_server_s_names_and_port_are_allowed() {
        let hosts = AllowedHosts::new("127.0.0.1:9100".parse().unwrap(), "127.0.0.1:9100".parse().unwrap());
        for ok in ["127.0.0.1:9100", "localhost:9100", "LOCALHOST:9100", "[::1]:9100", "localhost", "127.0.0.1"] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:9100",
            "evil.example",
            "127.0.0.1:80",
            "localhost:9101",
            "x",
            "",
            "127.0.0.1.evil:9100",
            "[::1]x",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
    }

    #[test]
    fn the_busy_answer_is_well_framed() {
        let text = std::str::from_utf8(BUSY_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }

    #[test]
    fn a_server_on_every_address_allows_the_address_it_was_reached_at() {
        let hosts = AllowedHosts::new("0.0.0.0:9100".parse().unwrap(), "192.168.1.5:9100".parse().unwrap());
        assert!(hosts.allows("192.168.1.5:9100"));
        assert!(!hosts.allows("192.168.1.6:9100"));
        assert!(!hosts.allows("0.0.0.0:9100"));
        if let Some(name) = host_name() {
            assert!(hosts.allows(&format!("{name}:9100")) && hosts.allows(&format!("{name}.local:9100")));
        }
    }
}
