//! Sealed secrets at egress: `${secret:NAME}` placeholders in the URL query,
//! header values and the request body are replaced by the host, after the
//! guest has handed the request over, so the value never exists in guest
//! memory.
//!
//! `${secret-basic:USER:PASS}` expands to `base64(value(USER) ":" value(PASS))`,
//! so `Authorization: Basic ${secret-basic:watttime.username:watttime.password}`
//! builds HTTP Basic auth from two secrets. Values are encoded for where they
//! land: percent-encoded in the query and in form bodies, JSON-string-escaped
//! in JSON bodies, as is in headers and other bodies. Errors name the secret,
//! never a value.

use base64::Engine as _;

const OPEN: &str = "${secret";

/// Most secret placeholders one request may carry (query, headers and body
/// together). Each costs a lookup and a copy of a secret value, so a guest
/// could otherwise turn a 4 MiB body of placeholders into ~150 MB of host
/// memory; real requests carry one to three.
pub const MAX_PLACEHOLDERS: usize = 64;

/// Why a request was refused before anything was sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EgressError {
    #[error(
        "secret {name:?} may not be sent to {destination}: add the host to grants.secrets.\"{name}\" of this guest"
    )]
    NotGranted { name: String, destination: String },
    #[error("secret {name:?} is not set (missing, expired or a placeholder); run `wattedge secrets set {name}`")]
    NotSet { name: String },
    #[error("malformed secret placeholder {0:?}; use ${{secret:NAME}} or ${{secret-basic:USER:PASS}}")]
    Malformed(String),
    #[error(
        "secret placeholders are substituted only in the URL query, header values and the body; found one in the {0}"
    )]
    Placement(&'static str),
    #[error("header {0:?} is not a valid header value after substituting its secret")]
    InvalidHeader(String),
    #[error("the request body contains a secret placeholder but is not UTF-8")]
    NotUtf8,
    #[error("the request is oversize: it carries more than {MAX_PLACEHOLDERS} secret placeholders, the most one may")]
    TooManyPlaceholders,
    #[error("the request is oversize: larger than host.http_max_body ({0} bytes) once its secrets are substituted")]
    Oversize(u64),
}

impl EgressError {
    /// The `/metrics` error kind of a refusal: a request grown past its
    /// limits is `oversize`, anything else about a secret is `secret`.
    pub fn kind(&self) -> &'static str {
        match self {
            EgressError::TooManyPlaceholders | EgressError::Oversize(_) => "oversize",
            _ => "secret",
        }
    }
}

/// How a substituted value is written where the placeholder was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Header values and bodies of other content types.
    Raw,
    /// URL query and `application/x-www-form-urlencoded` bodies.
    Percent,
    /// Inside a JSON string.
    Json,
}

/// Replaces placeholders using `lookup` (which checks grants and usability),
/// remembering every string it inserted so the response can be scrubbed of them.
pub struct Substituter<'a> {
    lookup: &'a dyn Fn(&str) -> Result<String, EgressError>,
    /// Every exact string written into the request (encoded forms included).
    pub inserted: Vec<String>,
    /// Placeholders replaced in this request so far (see [`MAX_PLACEHOLDERS`]).
    placeholders: usize,
    /// Bytes of secret values written into this request so far.
    expanded: u64,
    /// Most bytes one sealed text, and all values written, may take.
    max_bytes: u64,
}

impl<'a> Substituter<'a> {
    /// A substituter for one request; `lookup` decides per secret name.
    pub fn new(lookup: &'a dyn Fn(&str) -> Result<String, EgressError>) -> Substituter<'a> {
        Substituter { lookup, inserted: Vec::new(), placeholders: 0, expanded: 0, max_bytes: u64::MAX }
    }

    /// Refuses, as [`EgressError::Oversize`], a sealed query, header or body
    /// longer than `max_bytes`, or more than `max_bytes` of secret values
    /// written into the request in all (`host.http_max_body`): the host
    /// buffers the whole sealed request, so it obeys the body limit too.
    pub fn limited(mut self, max_bytes: u64) -> Substituter<'a> {
        self.max_bytes = max_bytes;
        self
    }

    /// `text` with every placeholder replaced; None when it has none.
    pub fn apply(&mut self, text: &str, encoding: Encoding) -> Result<Option<String>, EgressError> {
        if !text.contains(OPEN) {
            return Ok(None);
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(OPEN) {
            self.placeholders += 1;
            if self.placeholders > MAX_PLACEHOLDERS {
                return Err(EgressError::TooManyPlaceholders);
            }
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').ok_or_else(|| malformed(&rest[start..]))? + start;
            let value = self.expand(&rest[start + 2..end])?;
            let encoded = encode(&value, encoding);
            self.count(out.len() + encoded.len() + rest.len() - end - 1, encoded.len())?;
            self.remember(value);
            self.remember(encoded.clone());
            out.push_str(&encoded);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Ok(Some(out))
    }

    /// The value of `secret:NAME` or `secret-basic:USER:PASS`.
    fn expand(&self, inner: &str) -> Result<String, EgressError> {
        let bad = || EgressError::Malformed(format!("${{{inner}}}"));
        if let Some(name) = inner.strip_prefix("secret:") {
            return if valid_name(name) { (self.lookup)(name) } else { Err(bad()) };
        }
        let pair = inner.strip_prefix("secret-basic:").ok_or_else(bad)?;
        let (user, pass) = pair.split_once(':').ok_or_else(bad)?;
        if !valid_name(user) || !valid_name(pass) {
            return Err(bad());
        }
        let joined = format!("{}:{}", (self.lookup)(user)?, (self.lookup)(pass)?);
        Ok(base64::engine::general_purpose::STANDARD.encode(joined))
    }

    /// Counts `inserted` more bytes of secret values, for a sealed text
    /// that will be `sealed` bytes long; refuses either past the limit.
    fn count(&mut self, sealed: usize, inserted: usize) -> Result<(), EgressError> {
        self.expanded = self.expanded.saturating_add(inserted as u64);
        if sealed as u64 > self.max_bytes || self.expanded > self.max_bytes {
            return Err(EgressError::Oversize(self.max_bytes));
        }
        Ok(())
    }

    fn remember(&mut self, s: String) {
        if !s.is_empty() && !self.inserted.contains(&s) {
            self.inserted.push(s);
        }
    }
}

fn malformed(text: &str) -> EgressError {
    EgressError::Malformed(text.chars().take(60).collect())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `value` written for `encoding`.
pub fn encode(value: &str, encoding: Encoding) -> String {
    match encoding {
        Encoding::Raw => value.to_string(),
        Encoding::Json => {
            let quoted = serde_json::Value::String(value.to_string()).to_string();
            quoted[1..quoted.len() - 1].to_string()
        }
        Encoding::Percent => crate::percent::encode(value),
    }
}

/// The body encoding for a `Content-Type` header value.
pub fn body_encoding(content_type: Option<&str>) -> Encoding {
    let essence = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/x-www-form-urlencoded" {
        Encoding::Percent
    } else if essence == "application/json" || essence.ends_with("+json") {
        Encoding::Json
    } else {
        Encoding::Raw
    }
}

/// Substitutes in the query and header values of `parts` (refusing
/// placeholders in the path or authority) and in `body`.
pub fn seal(
    parts: &mut http::request::Parts,
    body: bytes::Bytes,
    subst: &mut Substituter<'_>,
) -> Result<bytes::Bytes, EgressError> {
    seal_uri(&mut parts.uri, subst)?;
    for (name, value) in parts.headers.iter_mut() {
        let Ok(text) = value.to_str() else { continue };
        if let Some(new) = subst.apply(text, Encoding::Raw)? {
            let mut sealed =
                http::HeaderValue::from_str(&new).map_err(|_| EgressError::InvalidHeader(name.to_string()))?;
            sealed.set_sensitive(true);
            *value = sealed;
        }
    }
    if !body.windows(OPEN.len()).any(|w| w == OPEN.as_bytes()) {
        return Ok(body);
    }
    let text = std::str::from_utf8(&body).map_err(|_| EgressError::NotUtf8)?;
    let content_type = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let new = subst.apply(text, body_encoding(content_type))?.unwrap_or_default();
    Ok(bytes::Bytes::from(new))
}

fn seal_uri(uri: &mut http::Uri, subst: &mut Substituter<'_>) -> Result<(), EgressError> {
    let has = |s: &str| s.contains(OPEN) || s.to_ascii_lowercase().contains("$%7bsecret");
    if uri.authority().is_some_and(|a| has(a.as_str())) {
        return Err(EgressError::Placement("host"));
    }
    if has(uri.path()) {
        return Err(EgressError::Placement("URL path"));
    }
    let Some(query) = uri.query() else { return Ok(()) };
    let Some(new_query) = subst.apply(query, Encoding::Percent)? else { return Ok(()) };
    let mut parts = std::mem::take(uri).into_parts();
    let pq = format!("{}?{new_query}", parts.path_and_query.as_ref().map(|p| p.path()).unwrap_or("/"));
    parts.path_and_query =
        Some(pq.parse().map_err(|_| EgressError::Placement("URL query (invalid after substitution)"))?);
    *uri = http::Uri::from_parts(parts).map_err(|_| EgressError::Placement("URL"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
