//! The `[host]` keys for guests' outbound HTTP (`extra_ca`, `http_timeout`,
//! `http_max_body`, `resolve`), kept apart so `config.rs` stays about the
//! file as a whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::{Checker, ConfigError, RawHost, parse_duration, parse_size};

/// The `[host]` keys for guests' outbound HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpHostConfig {
    /// A PEM file of extra CA certificates trusted besides the webpki roots.
    pub extra_ca: Option<PathBuf>,
    /// Default limit for connecting and for receiving a whole response.
    pub timeout: Duration,
    /// Largest request or response body, in bytes.
    pub max_body: u64,
    /// Static name → address overrides, like `curl --resolve`.
    pub resolve: BTreeMap<String, std::net::IpAddr>,
}

/// The default outbound HTTP timeout.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// The default outbound HTTP body limit.
pub const DEFAULT_HTTP_MAX_BODY: u64 = 4 << 20;

/// Validation of the outbound HTTP keys.
impl Checker<'_> {
    pub(super) fn http_host(&self, raw: &RawHost) -> Result<HttpHostConfig, ConfigError> {
        let extra_ca = raw.extra_ca.as_deref().map(|p| self.resolve(p));
        if let Some(path) = &extra_ca {
            load_pem(path).map_err(|e| self.error(&["host", "extra_ca"], format!("host.extra_ca: {e}")))?;
        }
        let timeout = match raw.http_timeout.as_deref() {
            None => DEFAULT_HTTP_TIMEOUT,
            Some(t) => parse_duration(t).map_err(|e| {
                self.error(&["host", "http_timeout"], format!("host.http_timeout = {t:?}: {e}; use e.g. \"30s\""))
            })?,
        };
        let max_body = match raw.http_max_body.as_deref() {
            None => DEFAULT_HTTP_MAX_BODY,
            Some(t) => parse_size(t).map_err(|e| {
                self.error(&["host", "http_max_body"], format!("host.http_max_body = {t:?}: {e}; use e.g. \"4MiB\""))
            })?,
        };
        let mut resolve = BTreeMap::new();
        for (name, ip) in &raw.resolve {
            let addr = ip.parse().map_err(|_| {
                self.error(
                    &["host", "resolve"],
                    format!("host.resolve.{name:?} = {ip:?} is not an IP address; use e.g. \"192.168.1.10\""),
                )
            })?;
            resolve.insert(name.to_ascii_lowercase(), addr);
        }
        Ok(HttpHostConfig { extra_ca, timeout, max_body, resolve })
    }
}

/// Every certificate in a PEM file; an error names the file and the fix.
pub fn load_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let certs = iter.collect::<Result<Vec<_>, _>>().map_err(|e| format!("{shown} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown} contains no \"BEGIN CERTIFICATE\" block; point host.extra_ca at a PEM CA file"));
    }
    Ok(certs)
}
