//! The OCI documents wattedge reads and writes: image indexes, image
//! manifests and their descriptors, with the media types of the wasm OCI
//! conventions (`application/wasm` layers and
//! `application/vnd.wasm.config.v0+json` configs, as `wkg`/`oci-wasm` write
//! them) and wattedge's own for precompiled artifacts and signatures; and
//! choosing, from an index, the one manifest this host's engine can run.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// What a registry may answer for a tag pushed by Docker-era tools.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The wasm OCI conventions: a component's bytes, and its config.
pub const WASM_LAYER: &str = "application/wasm";
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// A component precompiled by `wattedge compile` for one board profile.
pub const ARTIFACT_LAYER: &str = "application/vnd.wattedge.cwasm.v1";
pub const ARTIFACT_CONFIG: &str = "application/vnd.wattedge.cwasm.config.v1+json";
/// One signature (see `signature`), and the empty config of its manifest.
pub const SIGNATURE_LAYER: &str = "application/vnd.wattedge.signature.v1+json";
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
/// Index annotation: the engine settings a precompiled manifest needs.
pub const ENGINE_ANNOTATION: &str = "dev.wattedge.engine";
/// Index annotation: the board profile it was compiled for (informative).
pub const PROFILE_ANNOTATION: &str = "dev.wattedge.profile";
/// The `Accept` header for manifests: every kind this host understands.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                          application/vnd.docker.distribution.manifest.list.v2+json, \
                          application/vnd.docker.distribution.manifest.v2+json";

/// Why no manifest in an index suits this host.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(
        "it has no artifact for this board's engine ({wanted}) and this build cannot compile .wasm; publish with --profiles naming this board's profile (it offers: {offered})"
    )]
    NoArtifact { wanted: String, offered: String },
    #[error(
        "it has an artifact precompiled for this board's engine, but precompiled artifacts are native code, loaded only from signed references: set [fleet] trusted_keys and publish with --sign"
    )]
    ArtifactUnsigned,
    #[error(
        "it has no .wasm component (a manifest with an application/wasm layer); publish one with `wattedge publish`"
    )]
    NoWasm,
    #[error("it is not an OCI image index or image manifest: {0}")]
    Parse(String),
}

/// A pointer to content: what it is, its digest and its size.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// A descriptor of `bytes`.
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: super::Digest::of(bytes).to_string(),
            size: bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

impl Descriptor {
    fn from_value(value: &Value) -> Result<Descriptor, SelectError> {
        let field =
            |key: &str| text(value, key).ok_or_else(|| SelectError::Parse(format!("a descriptor without {key}")));
        let size = value.get("size").and_then(Value::as_u64);
        let platform = value
            .get("platform")
            .and_then(|p| Some(Platform { architecture: text(p, "architecture")?, os: text(p, "os")? }));
        Ok(Descriptor {
            media_type: field("mediaType")?,
            digest: field("digest")?,
            size: size.ok_or_else(|| SelectError::Parse("a descriptor without size".into()))?,
            platform,
            annotations: annotations(value),
        })
    }
}

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_string)
}

fn descriptors(value: &Value, key: &str) -> Result<Vec<Descriptor>, SelectError> {
    match value.get(key).and_then(Value::as_array) {
        Some(items) => items.iter().map(Descriptor::from_value).collect(),
        None => Ok(Vec::new()),
    }
}

/// String annotations (others are ignored).
fn annotations(value: &Value) -> BTreeMap<String, String> {
    let Some(map) = value.get("annotations").and_then(Value::as_object) else { return BTreeMap::new() };
    map.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()
}

/// The platform of an index entry.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

/// The platform of the `.wasm` manifest, as the wasm OCI conventions write it.
pub fn wasm_platform() -> Platform {
    Platform { architecture: "wasm".into(), os: "wasip2".into() }
}

/// An image index, or an image manifest: a registry answers either for a
/// tag. Both parse from the same JSON shape.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub schema_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Index: the manifests.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<Descriptor>,
    /// Manifest: its config and layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Descriptor>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Document {
    /// Reads a registry's JSON through `serde_json::Value` rather than a
    /// derived `Deserialize`: the board binary has Value's parser already,
    /// and each derived one would add its own few KB (aarch64 is at its budget).
    pub fn parse(bytes: &[u8]) -> Result<Document, SelectError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| SelectError::Parse(e.to_string()))?;
        let schema = value.get("schemaVersion").and_then(Value::as_u64);
        if schema != Some(2) {
            return Err(SelectError::Parse(format!("schemaVersion {schema:?} (expected 2)")));
        }
        Ok(Document {
            schema_version: 2,
            media_type: text(&value, "mediaType"),
            artifact_type: text(&value, "artifactType"),
            manifests: descriptors(&value, "manifests")?,
            config: value.get("config").map(Descriptor::from_value).transpose()?,
            layers: descriptors(&value, "layers")?,
            annotations: annotations(&value),
        })
    }

    /// An index (as opposed to a single manifest).
    pub fn is_index(&self) -> bool {
        self.config.is_none()
            && (!self.manifests.is_empty() || matches!(self.media_type.as_deref(), Some(INDEX | DOCKER_LIST)))
    }

    /// An image index of `manifests`.
    pub fn index(manifests: Vec<Descriptor>) -> Document {
        Document {
            schema_version: 2,
            media_type: Some(INDEX.into()),
            artifact_type: None,
            manifests,
            config: None,
            layers: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// An image manifest of `config` and `layers`.
    pub fn manifest(config: Descriptor, layers: Vec<Descriptor>) -> Document {
        Document {
            schema_version: 2,
            media_type: Some(MANIFEST.into()),
            artifact_type: None,
            manifests: Vec::new(),
            config: Some(config),
            layers,
            annotations: BTreeMap::new(),
        }
    }

    /// The first layer of `media_type`.
    pub fn layer(&self, media_type: &str) -> Option<&Descriptor> {
        self.layers.iter().find(|l| l.media_type == media_type)
    }
}

/// What this host can run: a precompiled artifact for its engine key (a
/// board profile's), and/or a `.wasm` it compiles itself.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The board profile's engine key (see [`engine_key`]); none without a board.
    pub engine: Option<String>,
    /// Whether this build has a compiler (not on 32-bit ARM).
    pub can_compile: bool,
    /// Whether the reference's signature was verified: only then is a
    /// precompiled artifact (native code) acceptable.
    pub signed: bool,
}

/// Which of an index's manifests this host pulls: its engine's
/// precompiled artifact when there is one and the reference is signed,
/// else the `.wasm` if this build can compile. Nothing else is fetched.
pub fn select<'a>(index: &'a Document, wanted: &Wanted) -> Result<&'a Descriptor, SelectError> {
    let artifact = wanted.engine.as_deref().and_then(|key| {
        index.manifests.iter().find(|m| m.annotations.get(ENGINE_ANNOTATION).map(String::as_str) == Some(key))
    });
    let wasm = index.manifests.iter().find(|m| m.platform.as_ref() == Some(&wasm_platform()));
    match (artifact, wasm) {
        (Some(artifact), _) if wanted.signed => Ok(artifact),
        (_, Some(wasm)) if wanted.can_compile => Ok(wasm),
        (Some(_), _) => Err(SelectError::ArtifactUnsigned),
        (None, _) if !wanted.can_compile => Err(SelectError::NoArtifact {
            wanted: wanted.engine.clone().unwrap_or_else(|| "no board profile set".into()),
            offered: offered(index),
        }),
        (None, _) => Err(SelectError::NoWasm),
    }
}

/// The profiles an index has artifacts for, for messages.
fn offered(index: &Document) -> String {
    let mut names: Vec<&str> = index
        .manifests
        .iter()
        .map(|m| match (&m.platform, m.annotations.get(PROFILE_ANNOTATION)) {
            (_, Some(profile)) => profile.as_str(),
            (Some(p), None) if p == &wasm_platform() => ".wasm",
            _ => "?",
        })
        .collect();
    names.dedup();
    if names.is_empty() { "nothing".into() } else { names.join(", ") }
}

/// The engine settings a precompiled artifact depends on (wasmtime refuses
/// any other): the code generator's target and the memory layout.
pub fn engine_key(profile: &crate::compile::board::Profile) -> String {
    format!(
        "{};memory_reservation={};memory_guard={}",
        profile.compiler_target(),
        profile.limits.memory_reservation,
        profile.limits.memory_guard
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(profile: Option<&str>, key: Option<&str>) -> Descriptor {
        let mut d = Descriptor::of(MANIFEST, profile.unwrap_or("wasm").as_bytes());
        match (profile, key) {
            (Some(profile), Some(key)) => {
                d.annotations.insert(PROFILE_ANNOTATION.into(), profile.into());
                d.annotations.insert(ENGINE_ANNOTATION.into(), key.into());
            }
            _ => d.platform = Some(wasm_platform()),
        }
        d
    }

    fn index() -> Document {
        Document::index(vec![
            entry(None, None),
            entry(Some("pi4"), Some("aarch64")),
            entry(Some("armv7"), Some("pulley32")),
        ])
    }

    #[test]
    fn a_signed_board_pulls_its_own_artifact_and_nothing_else() {
        let wanted = Wanted { engine: Some("pulley32".into()), can_compile: false, signed: true };
        let index = index();
        let chosen = select(&index, &wanted).unwrap();
        assert_eq!(chosen.annotations[PROFILE_ANNOTATION], "armv7");
    }

    #[test]
    fn an_unsigned_reference_never_yields_native_code() {
        let compiling = Wanted { engine: Some("aarch64".into()), can_compile: true, signed: false };
        assert_eq!(select(&index(), &compiling).unwrap().platform, Some(wasm_platform()));
        let interpreting = Wanted { engine: Some("pulley32".into()), can_compile: false, signed: false };
        let err = select(&index(), &interpreting).unwrap_err().to_string();
        assert!(err.contains("trusted_keys"), "{err}");
    }

    #[test]
    fn a_board_without_its_profile_in_the_index_is_told_which_profiles_exist() {
        let wanted = Wanted { engine: Some("riscv".into()), can_compile: false, signed: true };
        let err = select(&index(), &wanted).unwrap_err().to_string();
        assert!(err.contains("offers: .wasm, pi4, armv7"), "{err}");
    }

    #[test]
    fn documents_round_trip_and_tell_indexes_from_manifests() {
        let manifest = Document::manifest(Descriptor::of(WASM_CONFIG, b"{}"), vec![Descriptor::of(WASM_LAYER, b"x")]);
        let parsed = Document::parse(&serde_json::to_vec(&manifest).unwrap()).unwrap();
        assert!(!parsed.is_index());
        assert_eq!(parsed.layer(WASM_LAYER).map(|l| l.size), Some(1));
        assert!(Document::parse(&serde_json::to_vec(&index()).unwrap()).unwrap().is_index());
        assert!(Document::parse(b"{\"schemaVersion\":1}").is_err());
    }
}
