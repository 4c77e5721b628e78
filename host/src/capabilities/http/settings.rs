//! Host-wide outbound HTTP settings from `[host]`: timeout, body limit,
//! static name overrides and the TLS trust roots (webpki roots plus an
//! optional `extra_ca` PEM), built once and shared by every guest.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::config::{HttpHostConfig, load_pem};

/// What every guest's HTTP gate needs from the host config.
#[derive(Clone)]
pub struct HttpSettings {
    /// Default limit for connecting, and for receiving the whole response.
    pub timeout: Duration,
    /// Largest request or response body, in bytes.
    pub max_body: u64,
    /// `[host] resolve`: name → address, used instead of DNS.
    pub resolve: BTreeMap<String, IpAddr>,
    /// rustls client config with the trust roots.
    pub tls: Arc<rustls::ClientConfig>,
    /// The host's own admin API, which no guest may reach (see
    /// [`HttpSettings::guarding_admin`]).
    pub admin: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .field("resolve", &self.resolve)
            .finish_non_exhaustive()
    }
}

impl HttpSettings {
    /// Builds the settings; fails when `extra_ca` cannot be read or parsed.
    pub fn new(config: &HttpHostConfig) -> Result<HttpSettings, String> {
        let extra = match &config.extra_ca {
            Some(path) => load_pem(path)?,
            None => Vec::new(),
        };
        Ok(HttpSettings {
            timeout: config.timeout,
            max_body: config.max_body,
            resolve: config.resolve.clone(),
            tls: Arc::new(client_config(extra)?),
            admin: None,
        })
    }

    /// These settings, refusing every guest request that would reach the
    /// admin API listening at `admin`, whatever the guest's grants.
    pub fn guarding_admin(self, admin: std::net::SocketAddr) -> HttpSettings {
        HttpSettings { admin: Some(admin), ..self }
    }
}

fn client_config(extra: Vec<CertificateDer<'static>>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
    for cert in extra {
        roots.add(cert).map_err(|e| format!("host.extra_ca: a certificate is not a usable CA: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, DEFAULT_HTTP_MAX_BODY, DEFAULT_HTTP_TIMEOUT};

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/wattedge/wattedge.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn host_http_keys() {
        let config = parse(
            "[host]\nhttp_timeout = \"5s\"\nhttp_max_body = \"1MiB\"\nresolve = { \"API.test\" = \"10.0.0.2\" }\n",
        )
        .unwrap();
        let http = &config.host.http;
        assert_eq!((http.timeout.as_secs(), http.max_body), (5, 1 << 20));
        assert_eq!(http.resolve["api.test"].to_string(), "10.0.0.2");
        let defaults = parse("").unwrap().host.http;
        assert_eq!(
            (defaults.timeout, defaults.max_body, defaults.extra_ca.clone()),
            (DEFAULT_HTTP_TIMEOUT, DEFAULT_HTTP_MAX_BODY, None)
        );
        let settings = super::HttpSettings::new(&defaults).unwrap();
        assert_eq!(settings.max_body, DEFAULT_HTTP_MAX_BODY);
    }

    #[test]
    fn bad_host_http_keys_name_the_key() {
        let err = parse("[host]\nresolve = { \"a.test\" = \"not-an-ip\" }\n").unwrap_err();
        assert!(err.contains(":2:") && err.contains("host.resolve"), "{err}");
        let err = parse("[host]\nhttp_timeout = \"soon\"\n").unwrap_err();
        assert!(err.contains("host.http_timeout"), "{err}");
        let err = parse("[host]\nextra_ca = \"/nonexistent/ca.pem\"\n").unwrap_err();
        assert!(err.contains("host.extra_ca") && err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn bad_grants_name_the_key() {
        let guest = "[guests.probe]\ncomponent = \"builtin:correlator\"\n[guests.probe.grants]\n";
        let err = parse(&format!("{guest}http = [\"ftp://x\"]\n")).unwrap_err();
        assert!(err.contains("guests.probe.grants.http") && err.contains("ftp"), "{err}");
        let err = parse(&format!("{guest}secrets = {{ \"a\" = [\"h/p\"] }}\n")).unwrap_err();
        assert!(err.contains("guests.probe.grants.secrets"), "{err}");
        assert!(parse(&format!("{guest}http = [\"private:nas.lan:8123\", \"[::1]\"]\n")).is_ok());
    }
}
