//! `oci://REGISTRY/REPO:TAG` and `oci://REGISTRY/REPO@sha256:HEX`: parsing
//! and printing the references a guest's `component` may name, and the
//! sha256 digests that identify everything in a registry. A leaf module:
//! the config parses references with it, the rest of `fleet` resolves them.

use std::fmt;

/// The scheme that marks a component as a registry reference.
pub const OCI_PREFIX: &str = "oci://";

/// Why a reference or digest could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("{0:?} does not start with oci://")]
    Scheme(String),
    #[error("{0:?} has no repository; write oci://REGISTRY/REPO:TAG, e.g. oci://ghcr.io/me/probe:stable")]
    NoRepository(String),
    #[error("{text:?}: registry {registry:?} is not HOST or HOST:PORT")]
    Registry { text: String, registry: String },
    #[error(
        "{text:?}: repository {repository:?} must be lowercase path components of a-z, 0-9 and single '.', '_', '-' between them"
    )]
    Repository { text: String, repository: String },
    #[error("{text:?}: tag {tag:?} must be 1-128 of A-Z, a-z, 0-9, '_', '.', '-', not starting with '.' or '-'")]
    Tag { text: String, tag: String },
    #[error("{text:?} names neither a tag nor a digest; add :TAG (e.g. :stable) or @sha256:DIGEST")]
    Unpinned { text: String },
    #[error("{0:?} is not a digest; write sha256: and 64 lowercase hex digits")]
    Digest(String),
}

/// A sha256 content digest, held as its 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes)))
    }

    /// From 64 hex digits (a finished hasher's output, a file name).
    pub fn from_hex(hex: &str) -> Result<Digest, ReferenceError> {
        let ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok { Ok(Digest(hex.to_string())) } else { Err(ReferenceError::Digest(hex.to_string())) }
    }

    /// Parses `sha256:HEX` (the only algorithm this host verifies).
    pub fn parse(text: &str) -> Result<Digest, ReferenceError> {
        let hex = text.strip_prefix("sha256:").ok_or_else(|| ReferenceError::Digest(text.to_string()))?;
        Digest::from_hex(hex).map_err(|_| ReferenceError::Digest(text.to_string()))
    }

    /// The hex digits alone (file names, component versions).
    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// A component in a registry: a tag to follow, or a digest pinned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OciReference {
    /// `HOST` or `HOST:PORT`, as written.
    pub registry: String,
    /// `wattedge/probe`.
    pub repository: String,
    pub tag: Option<String>,
    /// With a digest, the content is pinned: the tag (if any) is informative.
    pub digest: Option<Digest>,
}

impl OciReference {
    /// Parses `oci://REGISTRY/REPO:TAG`, `…/REPO@sha256:HEX` or both.
    pub fn parse(text: &str) -> Result<OciReference, ReferenceError> {
        let rest = text.strip_prefix(OCI_PREFIX).ok_or_else(|| ReferenceError::Scheme(text.to_string()))?;
        let (registry, path) = rest.split_once('/').ok_or_else(|| ReferenceError::NoRepository(text.to_string()))?;
        if !valid_registry(registry) {
            return Err(ReferenceError::Registry { text: text.into(), registry: registry.into() });
        }
        let (path, digest) = match path.split_once('@') {
            Some((path, digest)) => (path, Some(Digest::parse(digest)?)),
            None => (path, None),
        };
        // A ':' after the last '/' starts the tag.
        let last_slash = path.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match path[last_slash..].find(':') {
            Some(i) => (&path[..last_slash + i], Some(&path[last_slash + i + 1..])),
            None => (path, None),
        };
        if !valid_repository(repository) {
            return Err(ReferenceError::Repository { text: text.into(), repository: repository.into() });
        }
        if let Some(tag) = tag.filter(|t| !valid_tag(t)) {
            return Err(ReferenceError::Tag { text: text.into(), tag: tag.into() });
        }
        if tag.is_none() && digest.is_none() {
            return Err(ReferenceError::Unpinned { text: text.into() });
        }
        Ok(OciReference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// What to ask the registry's manifest endpoint for: the digest when
    /// pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        // `parse` refuses a reference with neither.
        self.digest.as_ref().map(Digest::to_string).or_else(|| self.tag.clone()).unwrap_or_default()
    }

    /// The same repository, at `tag`.
    pub fn with_tag(&self, tag: &str) -> OciReference {
        OciReference { tag: Some(tag.to_string()), digest: None, ..self.clone() }
    }
}

impl fmt::Display for OciReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{OCI_PREFIX}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `HOST` or `HOST:PORT` (also a bracketed IPv6 literal).
pub fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => (host, Some(port)),
        _ => (registry, None),
    };
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

fn valid_repository(repository: &str) -> bool {
    !repository.is_empty()
        && repository.len() <= 255
        && repository.split('/').all(|component| {
            let bytes = component.as_bytes();
            let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            bytes.first().is_some_and(alnum)
                && bytes.last().is_some_and(alnum)
                && bytes.windows(2).all(|w| alnum(&w[0]) || alnum(&w[1]))
                && bytes.iter().all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        })
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    (1..=128).contains(&bytes.len())
        && !matches!(bytes[0], b'.' | b'-')
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_tag_reference_keeps_registry_port_repository_and_tag() {
        let r = OciReference::parse("oci://127.0.0.1:5000/wattedge/probe:stable").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "wattedge/probe");
        assert_eq!(r.tag.as_deref(), Some("stable"));
        assert_eq!(r.digest, None);
        assert_eq!(r.manifest_reference(), "stable");
        assert_eq!(r.to_string(), "oci://127.0.0.1:5000/wattedge/probe:stable");
    }

    #[test]
    fn a_digest_reference_is_pinned_and_asks_for_the_digest() {
        let text = format!("oci://ghcr.io/me/probe@sha256:{HEX}");
        let r = OciReference::parse(&text).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().map(Digest::hex), Some(HEX));
        assert_eq!(r.manifest_reference(), format!("sha256:{HEX}"));
        assert_eq!(r.to_string(), text);
    }

    #[test]
    fn references_without_tag_or_with_bad_parts_are_refused_with_the_fix() {
        let cases = [
            ("oci://ghcr.io/me/probe", "add :TAG"),
            ("oci://ghcr.io", "no repository"),
            ("oci://ghcr.io/Me/probe:x", "lowercase"),
            ("oci://ghcr.io/me/probe:-x", "tag"),
            ("oci://ghcr.io/me/probe@sha256:abc", "not a digest"),
            ("oci://gh cr.io/me/probe:x", "HOST or HOST:PORT"),
            ("https://ghcr.io/me/probe:x", "oci://"),
        ];
        for (text, expected) in cases {
            let err = OciReference::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn a_digest_is_the_sha256_of_the_bytes() {
        let d = Digest::of(b"abc");
        assert_eq!(d.to_string(), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        assert!(Digest::parse(&format!("sha512:{HEX}")).is_err());
        assert!(Digest::from_hex(&HEX.to_uppercase()).is_err());
    }
}
