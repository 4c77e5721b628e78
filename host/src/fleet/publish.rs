//! `wattedge publish GUEST.wasm oci://REGISTRY/REPO:TAG`: one reference for
//! every board. Pushes an OCI image index of a manifest with the `.wasm`
//! (wasm OCI conventions: an `application/wasm` layer and an
//! `application/vnd.wasm.config.v0+json` config, so `wkg` and other tools
//! can pull it) and, per `--profiles` board profile, a manifest with the
//! artifact `wattedge compile` makes for it, annotated with the engine
//! settings it needs ([`manifest::engine_key`]) so each board downloads
//! only its own. With `--sign KEYFILE` the index digest is signed (format
//! in [`super::signature`]). Build-machine side: feature `publish`.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::manifest::{self, Descriptor, Document, Platform};
use super::registry::{Registry, RegistryError};
use super::signature::signing::{KeyError, SigningKey};
use super::{Digest, OciReference, signature};
use crate::compile::board::Profile;
use crate::config::ComponentSource;

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error(
        "{0}: not a WebAssembly component (it does not start with \\0asm); build it with `cargo build --target wasm32-wasip2`"
    )]
    NotWasm(String),
    #[error("{0}: publish to a tag (oci://REGISTRY/REPO:TAG), not to a digest")]
    NoTag(String),
    #[error(transparent)]
    Precompile(Box<crate::compile::precompile::PrecompileError>),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// One manifest of the index, with its blobs.
pub struct Part {
    /// `.wasm`, or the board profile's name.
    pub label: String,
    config_media_type: &'static str,
    config: Vec<u8>,
    layer_media_type: &'static str,
    layer: Vec<u8>,
    platform: Platform,
    annotations: Vec<(&'static str, String)>,
}

/// What was pushed.
#[derive(Debug)]
pub struct Published {
    pub index: Digest,
    /// (label, manifest digest, layer size) per manifest.
    pub manifests: Vec<(String, Digest, u64)>,
    pub signed_by: Option<String>,
}

/// Reads `wasm` and precompiles it for each of `profiles`: the parts of the
/// index, `.wasm` first. CPU-heavy (Cranelift); `progress` hears each step.
pub fn build(wasm: &Path, profiles: &[Profile], mut progress: impl FnMut(&str)) -> Result<Vec<Part>, PublishError> {
    let bytes = std::fs::read(wasm).map_err(|error| PublishError::Read { path: wasm.display().to_string(), error })?;
    if !bytes.starts_with(b"\0asm") {
        return Err(PublishError::NotWasm(wasm.display().to_string()));
    }
    let mut parts = vec![wasm_part(bytes)];
    let scratch = scratch_dir();
    let built = profiles.iter().try_for_each(|profile| {
        progress(&format!("compiling for {} ({})", profile.name, profile.compiler_target()));
        let guests = [("guest".to_string(), ComponentSource::File(wasm.to_path_buf()))];
        let artifacts = crate::compile::precompile::compile(profile, &guests, &scratch, |_| {})
            .map_err(|e| PublishError::Precompile(Box::new(e)))?;
        for artifact in artifacts {
            let layer = std::fs::read(&artifact.path)
                .map_err(|error| PublishError::Read { path: artifact.path.display().to_string(), error })?;
            parts.push(artifact_part(profile, layer));
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&scratch);
    built.map(|()| parts)
}

/// Pushes `parts` as an index tagged `reference`'s tag, and signs it with
/// `signer` if given; `progress` hears each step.
pub async fn push(
    registry: &Registry,
    reference: &OciReference,
    parts: Vec<Part>,
    signer: Option<&SigningKey>,
    mut progress: impl FnMut(&str),
) -> Result<Published, PublishError> {
    let tag = reference.tag.clone().filter(|_| reference.digest.is_none());
    let tag = tag.ok_or_else(|| PublishError::NoTag(reference.to_string()))?;
    let repo = reference.repository.as_str();
    let mut entries = Vec::new();
    let mut manifests = Vec::new();
    for part in parts {
        progress(&format!("pushing {} ({} bytes)", part.label, part.layer.len()));
        let config = Descriptor::of(part.config_media_type, &part.config);
        let layer = Descriptor::of(part.layer_media_type, &part.layer);
        let size = part.layer.len() as u64;
        registry.push_blob(repo, Bytes::from(part.config)).await?;
        registry.push_blob(repo, Bytes::from(part.layer)).await?;
        let body = to_json(&Document::manifest(config, vec![layer]));
        let digest =
            registry.push_manifest(repo, &Digest::of(&body).to_string(), manifest::MANIFEST, body.clone()).await?;
        let mut entry = Descriptor::of(manifest::MANIFEST, &body);
        entry.platform = Some(part.platform);
        entry.annotations.extend(part.annotations.into_iter().map(|(k, v)| (k.to_string(), v)));
        entries.push(entry);
        manifests.push((part.label, digest, size));
    }
    let index = to_json(&Document::index(entries));
    // The index goes up by its digest first and the tag moves last, after
    // the signature: a board polling in between would otherwise see the tag
    // on an index that is not signed yet.
    let index_digest = Digest::of(&index);
    registry.push_manifest(repo, &index_digest.to_string(), manifest::INDEX, index.clone()).await?;
    let signed_by = match signer {
        Some(signer) => {
            progress("signing");
            Some(sign(registry, repo, &index_digest, signer).await?)
        }
        None => None,
    };
    progress(&format!("tagging {tag}"));
    registry.push_manifest(repo, &tag, manifest::INDEX, index).await?;
    Ok(Published { index: index_digest, manifests, signed_by })
}

/// Adds `signer`'s signature of `index` to the signature manifest under
/// `sha256-HEX.sig`, keeping signatures other keys put there. Also what a
/// signing step after the push does (cosign's order): boards that refused
/// the index as unsigned take it at their next poll.
pub async fn sign(
    registry: &Registry,
    repo: &str,
    index: &Digest,
    signer: &SigningKey,
) -> Result<String, PublishError> {
    let tag = signature::signature_tag(index);
    let mut layers: Vec<Descriptor> = match registry.manifest(repo, &tag, super::MAX_MANIFEST_BYTES).await? {
        Some(existing) => Document::parse(&existing.bytes).map(|d| d.layers).unwrap_or_default(),
        None => Vec::new(),
    };
    let blob = signer.sign(index);
    let layer = Descriptor::of(manifest::SIGNATURE_LAYER, &blob);
    registry.push_blob(repo, Bytes::from(blob)).await?;
    layers.retain(|l| l.media_type == manifest::SIGNATURE_LAYER && l.digest != layer.digest);
    layers.push(layer);
    let empty = b"{}".to_vec();
    let config = Descriptor::of(manifest::EMPTY_CONFIG, &empty);
    registry.push_blob(repo, Bytes::from(empty)).await?;
    let body = to_json(&Document::manifest(config, layers));
    registry.push_manifest(repo, &tag, manifest::MANIFEST, body).await?;
    Ok(signer.public().id())
}

fn wasm_part(bytes: Vec<u8>) -> Part {
    let layer_digest = Digest::of(&bytes).to_string();
    let created = crate::timefmt::rfc3339(std::time::SystemTime::now());
    let config = serde_json::json!({
        "created": created,
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest],
    });
    Part {
        label: ".wasm".into(),
        config_media_type: manifest::WASM_CONFIG,
        config: serde_json::to_vec(&config).unwrap_or_default(),
        layer_media_type: manifest::WASM_LAYER,
        layer: bytes,
        platform: manifest::wasm_platform(),
        annotations: Vec::new(),
    }
}

fn artifact_part(profile: &Profile, layer: Vec<u8>) -> Part {
    let key = manifest::engine_key(profile);
    let config = serde_json::json!({
        "profile": profile.name,
        "engine": key,
        "wattedge": env!("CARGO_PKG_VERSION"),
    });
    Part {
        label: profile.name.clone(),
        config_media_type: manifest::ARTIFACT_CONFIG,
        config: serde_json::to_vec(&config).unwrap_or_default(),
        layer_media_type: manifest::ARTIFACT_LAYER,
        layer,
        platform: Platform { architecture: profile.engine.clone(), os: "wattedge".into() },
        annotations: vec![(manifest::ENGINE_ANNOTATION, key), (manifest::PROFILE_ANNOTATION, profile.name.clone())],
    }
}

fn to_json(document: &Document) -> Bytes {
    Bytes::from(serde_json::to_vec(document).unwrap_or_default())
}

/// A private scratch directory for the precompiled artifacts.
fn scratch_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!("wattedge-publish-{}-{nanos}", std::process::id()))
}
