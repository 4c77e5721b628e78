//! A token service for the registry's `auth: token` mode, as Docker Hub,
//! GHCR and Harbor run one: it checks Basic credentials and answers
//! `{"token": JWT}`, an ES256 JWT whose `x5c` certificate the registry
//! trusts (its `rootcertbundle`), granting the scope asked for. It records
//! how many tokens it issued and refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The registry's service name, which tokens are issued for.
pub const SERVICE: &str = "wattedge-test-registry";
pub const ISSUER: &str = "wattedge-test-token-service";

/// A running token service.
pub struct TokenService {
    pub port: u16,
    /// The certificate (PEM) the registry must trust.
    pub cert_pem: String,
    pub issued: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
}

impl TokenService {
    /// Serves on a free loopback port; only `username:password` gets tokens.
    pub async fn start(username: &str, password: &str) -> TokenService {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["token-service".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("signing key");
        let x5c = STANDARD.encode(cert.der());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (issued, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let expected = format!("Basic {}", STANDARD.encode(format!("{username}:{password}")));
        let state = Arc::new((signer, x5c, expected, issued.clone(), refused.clone()));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).to_string();
                    let (signer, x5c, expected, issued, refused) = &*state;
                    let authorized = request.lines().any(|l| {
                        l.split_once(':')
                            .is_some_and(|(k, v)| k.eq_ignore_ascii_case("authorization") && v.trim() == expected)
                    });
                    let answer = if authorized {
                        issued.fetch_add(1, Ordering::SeqCst);
                        let scope = query_param(&request, "scope").unwrap_or_default();
                        let body = format!("{{\"token\":\"{}\"}}", jwt(signer, x5c, &scope));
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        refused.fetch_add(1, Ordering::SeqCst);
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                    };
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        TokenService { port, cert_pem: cert.pem(), issued, refused }
    }

    /// The realm URL the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }
}

/// `scope=repository:NAME:ACTIONS` of the request line, percent-decoded.
fn query_param(request: &str, name: &str) -> Option<String> {
    let target = request.split_whitespace().nth(1)?;
    let query = target.split_once('?')?.1;
    let value = query.split('&').find_map(|pair| pair.strip_prefix(&format!("{name}=")))?;
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&value[i + 1..i + 3], 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An ES256 JWT granting `scope` (`repository:NAME:a,b`).
fn jwt(signer: &ring::signature::EcdsaKeyPair, x5c: &str, scope: &str) -> String {
    let mut parts = scope.splitn(3, ':');
    let (kind, name, actions) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": "publisher", "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{scope}"),
        "access": [{"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}],
    });
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = signer.sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes()).expect("sign");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}
