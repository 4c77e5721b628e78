//! Signatures of published references: Ed25519 over the image index's
//! digest, with ring (already in the binary through rustls).
//!
//! The format (README, "A fleet of boards"): distribution 2.8 has no
//! referrers API, so like cosign the signatures of index `sha256:HEX` live
//! under the tag `sha256-HEX.sig` of the same repository: an image manifest
//! with an empty config and one `application/vnd.wattedge.signature.v1+json`
//! layer per signature, each the JSON
//! `{"signed":"sha256:HEX","key_id":"…","signature":"BASE64"}`. The signed
//! message is `wattedge-signature-v1:sha256:HEX`, so a signature cannot be
//! replayed as any other kind of Ed25519 signature. A key is written
//! `ed25519:BASE64` (its 32 raw bytes) in `[fleet] trusted_keys`; its id
//! is the first 16 hex digits of the sha256 of those bytes.
//!
//! Boards only verify; keygen and signing are in the `publish` feature.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use serde_json::Value;

use super::Digest;

/// The prefix of a public key in the config.
pub const KEY_PREFIX: &str = "ed25519:";
/// The tag that holds the signatures of `digest`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// The largest signature blob read (a signature is about 200 bytes).
pub const MAX_SIGNATURE_BYTES: u64 = 4096;
/// The most signature layers looked at.
pub const MAX_SIGNATURES: usize = 8;

/// Why a reference's signature was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("{0:?} is not a public key; write \"ed25519:\" and the base64 `wattedge keygen` printed")]
    BadKey(String),
    #[error(
        "{0} is not signed (no {tag} in its repository); publish it with `wattedge publish --sign KEYFILE`",
        tag = "sha256-HEX.sig"
    )]
    Unsigned(Digest),
    #[error("{digest} is not signed by a trusted key: {found}; trusted keys are {trusted}")]
    Untrusted { digest: Digest, found: String, trusted: String },
}

/// One signature, as stored in the registry.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SignatureBlob {
    pub signed: String,
    pub key_id: String,
    pub signature: String,
}

impl SignatureBlob {
    /// Through `serde_json::Value` (see `manifest::Document::parse` for why).
    fn parse(bytes: &[u8]) -> Option<SignatureBlob> {
        let value: Value = serde_json::from_slice(bytes).ok()?;
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        Some(SignatureBlob { signed: text("signed")?, key_id: text("key_id")?, signature: text("signature")? })
    }
}

/// A public key trusted to sign references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    raw: [u8; 32],
}

impl TrustedKey {
    /// Parses `ed25519:BASE64`.
    pub fn parse(text: &str) -> Result<TrustedKey, SignatureError> {
        let bad = || SignatureError::BadKey(text.to_string());
        let encoded = text.trim().strip_prefix(KEY_PREFIX).ok_or_else(bad)?;
        let bytes = BASE64.decode(encoded).map_err(|_| bad())?;
        let raw: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(TrustedKey { raw })
    }

    /// From the 32 raw bytes.
    pub fn from_raw(raw: [u8; 32]) -> TrustedKey {
        TrustedKey { raw }
    }

    /// The first 16 hex digits of the key's sha256.
    pub fn id(&self) -> String {
        Digest::of(&self.raw).hex()[..16].to_string()
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.raw).verify(message, signature).is_ok()
    }
}

impl std::fmt::Display for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{KEY_PREFIX}{}", BASE64.encode(self.raw))
    }
}

/// What is signed for index `digest`.
pub fn message(digest: &Digest) -> Vec<u8> {
    format!("wattedge-signature-v1:{digest}").into_bytes()
}

/// The id of the trusted key that signed `digest` in one of `blobs` (raw
/// signature-layer contents), or why none did.
pub fn verify(digest: &Digest, blobs: &[Vec<u8>], trusted: &[TrustedKey]) -> Result<String, SignatureError> {
    if blobs.is_empty() {
        return Err(SignatureError::Unsigned(digest.clone()));
    }
    let message = message(digest);
    let mut found = Vec::new();
    for blob in blobs {
        let Some(sig) = SignatureBlob::parse(blob) else {
            found.push("an unreadable signature".to_string());
            continue;
        };
        let key = trusted.iter().find(|k| k.id() == sig.key_id);
        let bytes = BASE64.decode(&sig.signature).unwrap_or_default();
        match key {
            Some(key) if sig.signed == digest.to_string() && key.verifies(&message, &bytes) => return Ok(key.id()),
            Some(_) => found.push(format!("an invalid signature claiming key {}", sig.key_id)),
            None => found.push(format!("a signature by untrusted key {}", sig.key_id)),
        }
    }
    let trusted = trusted.iter().map(TrustedKey::id).collect::<Vec<_>>().join(", ");
    Err(SignatureError::Untrusted { digest: digest.clone(), found: found.join(", "), trusted })
}

/// Key generation and signing, for `wattedge keygen` and `publish --sign`.
#[cfg(feature = "publish")]
pub mod signing {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;

    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;

    /// Why a key could not be made, read or used.
    #[derive(Debug, thiserror::Error)]
    pub enum KeyError {
        #[error("{path}: {error}")]
        Io { path: String, error: std::io::Error },
        #[error("{0}: not an Ed25519 private key written by `wattedge keygen`")]
        NotAKey(String),
        #[error("cannot generate a key: the system's random source failed")]
        Random,
    }

    /// A signing key, read from a `wattedge keygen` file.
    pub struct SigningKey {
        pair: Ed25519KeyPair,
    }

    impl SigningKey {
        /// Writes a new private key to `path` (mode 0600; an existing file is
        /// never replaced) and its public key to `path.pub`; returns the key.
        pub fn generate(path: &Path) -> Result<TrustedKey, KeyError> {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
            let key = Self::from_pkcs8(pkcs8.as_ref(), path)?.public();
            let io = |error| KeyError::Io { path: path.display().to_string(), error };
            let mut file =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
            file.write_all(pkcs8.as_ref()).and_then(|()| file.sync_all()).map_err(io)?;
            let public = path.with_extension("pub");
            std::fs::write(&public, format!("{key}\n"))
                .map_err(|error| KeyError::Io { path: public.display().to_string(), error })?;
            Ok(key)
        }

        /// Reads the private key at `path`.
        pub fn read(path: &Path) -> Result<SigningKey, KeyError> {
            let bytes =
                std::fs::read(path).map_err(|error| KeyError::Io { path: path.display().to_string(), error })?;
            Self::from_pkcs8(&bytes, path)
        }

        fn from_pkcs8(bytes: &[u8], path: &Path) -> Result<SigningKey, KeyError> {
            let pair = Ed25519KeyPair::from_pkcs8(bytes).map_err(|_| KeyError::NotAKey(path.display().to_string()))?;
            Ok(SigningKey { pair })
        }

        /// The public half.
        pub fn public(&self) -> TrustedKey {
            let mut raw = [0u8; 32];
            raw.copy_from_slice(self.pair.public_key().as_ref());
            TrustedKey::from_raw(raw)
        }

        /// The signature blob for index `digest`.
        pub fn sign(&self, digest: &Digest) -> Vec<u8> {
            let signature = self.pair.sign(&message(digest));
            let blob = SignatureBlob {
                signed: digest.to_string(),
                key_id: self.public().id(),
                signature: BASE64.encode(signature.as_ref()),
            };
            serde_json::to_vec(&blob).unwrap_or_default()
        }
    }
}

#[cfg(all(test, feature = "publish"))]
mod tests {
    use super::signing::SigningKey;
    use super::*;

    fn key(dir: &std::path::Path, name: &str) -> (SigningKey, TrustedKey) {
        let path = dir.join(name);
        let public = SigningKey::generate(&path).unwrap();
        (SigningKey::read(&path).unwrap(), public)
    }

    #[test]
    fn keygen_writes_a_private_key_only_its_owner_reads_and_a_printable_public_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (signer, public) = key(dir.path(), "fleet.key");
        let mode = std::fs::metadata(dir.path().join("fleet.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let printed = std::fs::read_to_string(dir.path().join("fleet.pub")).unwrap();
        assert_eq!(TrustedKey::parse(&printed).unwrap(), public);
        assert_eq!(signer.public(), public);
        assert!(SigningKey::generate(&dir.path().join("fleet.key")).is_err(), "never overwrites a key");
    }

    #[test]
    fn a_signature_verifies_only_for_its_digest_and_a_trusted_key() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, public) = key(dir.path(), "a.key");
        let (_, other) = key(dir.path(), "b.key");
        let digest = Digest::of(b"index");
        let blob = signer.sign(&digest);
        assert_eq!(verify(&digest, std::slice::from_ref(&blob), std::slice::from_ref(&public)).unwrap(), public.id());
        let err = verify(&digest, std::slice::from_ref(&blob), std::slice::from_ref(&other)).unwrap_err();
        assert!(err.to_string().contains("untrusted key"), "{err}");
        let err =
            verify(&Digest::of(b"other"), std::slice::from_ref(&blob), std::slice::from_ref(&public)).unwrap_err();
        assert!(err.to_string().contains("invalid signature"), "{err}");
        assert!(matches!(verify(&digest, &[], &[public]), Err(SignatureError::Unsigned(_))));
    }

    #[test]
    fn malformed_public_keys_are_refused_with_the_expected_form() {
        for text in ["ed25519:", "ed25519:AAAA", "rsa:AAAA", ""] {
            let err = TrustedKey::parse(text).unwrap_err().to_string();
            assert!(err.contains("ed25519:"), "{text}: {err}");
        }
    }
}
