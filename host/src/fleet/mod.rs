//! Guests by reference: `component = "oci://REGISTRY/REPO:TAG"` (or
//! `@sha256:DIGEST`). This module owns turning such a reference into a
//! verified local file the host loads like any other component:
//! resolve the tag to a digest, check the signature when keys are trusted,
//! choose the one manifest this board's engine runs, download only its
//! layer, verify every digest, keep it under `state_dir/oci`, and start
//! from that copy when the registry cannot be reached (offline first).
//!
//! [`Fleet::resolve`] is the one entry point ("reference → digest →
//! verified local artifact"); the start path calls [`Fleet::local`], which
//! resolves once per process. `publish` (feature `publish`) is the other
//! direction, for the build machine.

pub mod cache;
pub mod manifest;
#[cfg(all(feature = "publish", not(target_arch = "arm")))]
pub mod publish;
pub mod registry;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::oci::{Digest, OCI_PREFIX, OciReference, ReferenceError, reference, signature};

use crate::config::FleetConfig;
use crate::secrets::SecretStore;
use cache::OciCache;
pub use cache::Record;
use manifest::{Document, SelectError, Wanted};
use registry::{Credentials, Registry, RegistryError};
use signature::SignatureError;

/// The largest manifest or index read.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// The largest component or artifact downloaded.
pub const MAX_ARTIFACT_BYTES: u64 = 64 << 20;

/// The start path loads components through `compile`, which knows nothing
/// of registries: a failed resolve reaches it as a boxed error.
impl From<FleetError> for crate::compile::component::ComponentError {
    fn from(error: FleetError) -> Self {
        crate::compile::component::ComponentError::Fetch(Box::new(error))
    }
}

/// Why a reference could not be turned into a component to run.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{reference}: {error}")]
    Registry { reference: String, error: RegistryError },
    #[error("{reference}: refused: {error}")]
    Signature { reference: String, error: SignatureError },
    #[error("{reference}: {error}")]
    Select { reference: String, error: SelectError },
    #[error(
        "{reference}: the registry cannot be reached ({error}) and this board has no copy of it (it never resolved this reference); connect the board to the registry once, or check the reference and [fleet] insecure_registries"
    )]
    NeverResolved { reference: String, error: RegistryError },
    #[error("{reference}: {what} is malformed: {detail}")]
    Malformed { reference: String, what: String, detail: String },
    #[error("{reference}: {what} is {size} bytes, more than the {limit} this host accepts")]
    TooLarge { reference: String, what: String, size: u64, limit: u64 },
    #[error("{reference}: {error}")]
    Cache { reference: String, error: cache::CacheError },
    #[error("{reference}: {digest} was refused on this board; it is not tried again until the tag moves")]
    Refused { reference: String, digest: Digest },
}

impl FleetError {
    /// Whether the registry answered and what it serves for the digest is
    /// refused for its content (signature, a digest that does not match,
    /// nothing for this board, malformed or too large): asking again for
    /// the same digest gives the same answer. An unreachable registry or a
    /// refused login is not: that may change by the next poll.
    fn refuses_the_content(&self) -> bool {
        match self {
            Self::Signature { .. } | Self::Select { .. } | Self::Malformed { .. } | Self::TooLarge { .. } => true,
            Self::Registry { error, .. } => matches!(error, RegistryError::DigestMismatch { .. }),
            Self::NeverResolved { .. } | Self::Cache { .. } | Self::Refused { .. } => false,
        }
    }
}

/// A reference resolved to a verified local copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The digest the reference named (its index, or single manifest).
    pub top: Digest,
    /// The component or precompiled artifact chosen and downloaded.
    pub artifact: Digest,
    /// Where its verified bytes are.
    pub path: PathBuf,
    /// Precompiled (native) code rather than `.wasm`.
    pub precompiled: bool,
    /// Taken from the cache without the registry's current answer: the
    /// registry could not be used, or a followed tag started from the copy
    /// it ran before (see [`Fleet::local`]).
    pub offline: bool,
    /// The id of the trusted key whose signature was verified.
    pub signed_by: Option<String>,
}

/// The host's registry side: settings, cache and what was resolved.
pub struct Fleet {
    config: FleetConfig,
    cache: OciCache,
    secrets: Option<Arc<SecretStore>>,
    /// The board profile's engine key (precompiled artifacts it can load).
    engine: Option<String>,
    resolved: Mutex<HashMap<OciReference, Resolved>>,
    /// The artifact each reference ran before its last rollout in this
    /// process (the rollback target), kept by [`Fleet::collect_garbage`].
    previous: Mutex<HashMap<OciReference, Digest>>,
    /// The digest a followed tag named when its content was refused
    /// ([`FleetError::refuses_the_content`]): not fetched again until the
    /// tag moves. In memory: a restart asks once more, and says so.
    refused_content: Mutex<HashMap<OciReference, ContentRefusal>>,
    /// Held (shared) by every pull from its first request until its record
    /// is saved, and (exclusively) by the garbage collection: a blob just
    /// downloaded is never collected before a record names it.
    pulls: tokio::sync::RwLock<()>,
    blob_downloads: AtomicU64,
}

impl Fleet {
    /// The fleet side of a host: `config`'s `[fleet]`, its board profile
    /// and `state_dir`; registry credentials come from `secrets`.
    pub fn new(config: &crate::config::Config, secrets: Option<Arc<SecretStore>>) -> Fleet {
        Fleet {
            config: config.fleet.clone(),
            cache: OciCache::new(&config.host.state_dir),
            secrets,
            engine: config.host.board.as_ref().map(manifest::engine_key),
            resolved: Mutex::new(HashMap::new()),
            previous: Mutex::new(HashMap::new()),
            refused_content: Mutex::new(HashMap::new()),
            pulls: tokio::sync::RwLock::new(()),
            blob_downloads: AtomicU64::new(0),
        }
    }

    /// Blob downloads started by this host (each layer and signature GET).
    pub fn blob_downloads(&self) -> u64 {
        self.blob_downloads.load(Ordering::Relaxed)
    }

    /// What `reference` runs as in this process: resolved on first use,
    /// then the same copy (so a tier-up or restart of the instance never
    /// changes version behind the guest's back). A followed tag starts from
    /// the copy it ran before when there is one (see [`Fleet::start_copy`]).
    pub async fn local(&self, reference: &OciReference) -> Result<Resolved, FleetError> {
        if let Some(known) = self.resolved.lock().unwrap_or_else(|e| e.into_inner()).get(reference) {
            return Ok(known.clone());
        }
        let resolved = match self.start_copy(reference) {
            Some(copy) => copy,
            None => self.resolve(reference).await?,
        };
        self.resolved.lock().unwrap_or_else(|e| e.into_inner()).insert(reference.clone(), resolved.clone());
        Ok(resolved)
    }

    /// The verified copy a followed tag ran before (`refs.json`), if it is
    /// intact and signed as today's `trusted_keys` want: a digest the tag
    /// moved to while the board was off then reaches it through the
    /// follower's first poll, so through the health gate, like on a board
    /// that was on. A pinned digest, or a tag never resolved, has none.
    fn start_copy(&self, reference: &OciReference) -> Option<Resolved> {
        if reference.digest.is_some() {
            return None;
        }
        let copy = self.cached_copy(reference).ok().flatten()?;
        tracing::info!(%reference, artifact = %copy.artifact, "starting from the cached copy it ran before; a new digest of the tag is rolled out through the health gate");
        Some(copy)
    }

    /// How a followed tag is polled and gated (`[fleet]`).
    pub fn rollout_config(&self) -> &crate::config::RolloutConfig {
        &self.config.rollout
    }

    /// What `reference` runs as in this process, if it was resolved.
    pub fn running(&self, reference: &OciReference) -> Option<Resolved> {
        self.resolved.lock().unwrap_or_else(|e| e.into_inner()).get(reference).cloned()
    }

    /// Makes `resolved` what `reference` runs as from now on (a rollout
    /// that passed its gate, or a rollback), here and in `refs.json`, so
    /// that an instance restart or an offline start runs it.
    pub fn adopt(&self, reference: &OciReference, resolved: Resolved, record: Option<Record>) {
        if let Some(record) = record
            && let Err(error) = self.cache.save_record(&reference.to_string(), record)
        {
            tracing::warn!(%reference, %error, "could not record the version in refs.json");
        }
        let artifact = resolved.artifact.clone();
        let before = self.resolved.lock().unwrap_or_else(|e| e.into_inner()).insert(reference.clone(), resolved);
        if let Some(before) = before.filter(|b| b.artifact != artifact) {
            self.previous.lock().unwrap_or_else(|e| e.into_inner()).insert(reference.clone(), before.artifact);
        }
    }

    /// Deletes the cached blobs nothing needs any more (after a rollout was
    /// adopted or refused): kept are what every `refs.json` record names
    /// (what runs, what a pinned reference resolved to), what this process
    /// runs, and what each reference ran before its last rollout.
    pub async fn collect_garbage(&self) {
        let _no_pull = self.pulls.write().await;
        let mut keep: std::collections::HashSet<Digest> =
            self.cache.records().values().filter_map(|r| Digest::parse(&r.artifact).ok()).collect();
        keep.extend(self.resolved.lock().unwrap_or_else(|e| e.into_inner()).values().map(|r| r.artifact.clone()));
        keep.extend(self.previous.lock().unwrap_or_else(|e| e.into_inner()).values().cloned());
        match self.cache.collect_garbage(&keep) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, kept = keep.len(), "oci cache: unused blobs removed"),
            Err(error) => tracing::warn!(%error, "oci cache: unused blobs not removed"),
        }
    }

    /// Goes back to `kept` (what `reference` ran before a rollout) and
    /// remembers `refused` in `refs.json`, so that neither the follower nor
    /// a restart takes that digest again until the tag moves.
    pub fn refuse(&self, reference: &OciReference, running: Resolved, kept: Option<Record>, refused: &Digest) {
        let kept = kept.map(|record| Record { refused: Some(refused.to_string()), ..record });
        self.adopt(reference, running, kept);
    }

    /// What `refs.json` says `reference` resolved to (kept by a rollout so
    /// that a rollback can restore it).
    pub fn record(&self, reference: &OciReference) -> Option<Record> {
        self.cache.record(&reference.to_string())
    }

    /// The registry's current answer for a followed tag, verified and
    /// cached; unlike [`resolve`](Self::resolve) no fallback to the cache:
    /// an error is a refusal (or an unreachable registry) to report.
    /// A digest whose content was refused is not fetched again while the
    /// tag names it: one manifest request, and [`FleetError::Refused`].
    pub async fn latest(&self, reference: &OciReference) -> Result<Resolved, FleetError> {
        self.pull(reference, Remember::Refusals).await
    }

    /// Asks the registry what `reference` is now and makes a verified
    /// local copy; when the registry cannot be used (unreachable, or what
    /// it serves is refused) the last verified copy is the answer, with a
    /// warning. A pinned digest already cached needs no registry at all.
    pub async fn resolve(&self, reference: &OciReference) -> Result<Resolved, FleetError> {
        if reference.digest.is_some()
            && let Ok(Some(cached)) = self.cached_copy(reference)
        {
            return Ok(Resolved { offline: false, ..cached });
        }
        let error = match self.pull(reference, Remember::Nothing).await {
            Ok(resolved) => return Ok(resolved),
            Err(error) => error,
        };
        match self.cached_copy(reference) {
            Ok(Some(cached)) => {
                tracing::warn!(%reference, artifact = %cached.artifact, error = %error, "starting from the cached copy");
                Ok(cached)
            }
            Ok(None) | Err(_) => Err(match error {
                FleetError::Registry { reference, error } if error.is_unreachable() => {
                    FleetError::NeverResolved { reference, error }
                }
                other => other,
            }),
        }
    }

    /// The registry's current answer for `reference`, verified and cached.
    async fn pull(&self, reference: &OciReference, remember: Remember) -> Result<Resolved, FleetError> {
        let _pulling = self.pulls.read().await;
        let name = reference.to_string();
        let fail = |error| FleetError::Registry { reference: name.clone(), error };
        self.cache.prepare().map_err(|error| FleetError::Cache { reference: name.clone(), error })?;
        let registry = self.registry(&reference.registry).map_err(fail)?;
        let downloads = Downloads { fleet: self, registry: &registry };
        let top_bytes = downloads.manifest(reference, &reference.manifest_reference()).await?;
        let top = Digest::of(&top_bytes.bytes);
        check_top(reference, &top, top_bytes.digest_header.as_deref())?;
        let unsigned = match self.refusal_of(reference, &top) {
            Some(ContentRefusal { signature: None, .. }) => {
                return Err(FleetError::Refused { reference: name, digest: top });
            }
            Some(ContentRefusal { signature: Some(said), .. }) => Some(said),
            None => None,
        };
        let pulled = self.pull_content(reference, &downloads, &top, &top_bytes.bytes).await;
        match pulled {
            Err(error) if remember == Remember::Refusals && error.refuses_the_content() => {
                // A signature may be added after the tag moved (signing
                // after pushing is how cosign works): such a digest is
                // asked about again every poll, but said only once.
                let signature = matches!(error, FleetError::Signature { .. }).then(|| error.to_string());
                let again = signature.is_some() && signature == unsigned;
                let refusal = ContentRefusal { digest: top.clone(), signature };
                self.refused_content.lock().unwrap_or_else(|e| e.into_inner()).insert(reference.clone(), refusal);
                match again {
                    true => Err(FleetError::Refused { reference: name, digest: top }),
                    false => Err(error),
                }
            }
            Ok(resolved) => {
                // The tag moved on: a refusal of an older digest is history.
                self.refused_content.lock().unwrap_or_else(|e| e.into_inner()).remove(reference);
                Ok(resolved)
            }
            other => other,
        }
    }

    /// Why this board refused `top` for `reference`, if it did: its `init`
    /// or gate failed (kept in `refs.json`), or its content (kept in memory).
    fn refusal_of(&self, reference: &OciReference, top: &Digest) -> Option<ContentRefusal> {
        let recorded = self.cache.record(&reference.to_string()).and_then(|r| r.refused);
        if recorded.is_some_and(|refused| refused == top.to_string()) {
            return Some(ContentRefusal { digest: top.clone(), signature: None });
        }
        let content = self.refused_content.lock().unwrap_or_else(|e| e.into_inner()).get(reference).cloned();
        content.filter(|refusal| refusal.digest == *top)
    }

    /// What `top` (its bytes `top_bytes`) names for this board, verified,
    /// downloaded and recorded.
    async fn pull_content(
        &self,
        reference: &OciReference,
        downloads: &Downloads<'_>,
        top: &Digest,
        top_bytes: &[u8],
    ) -> Result<Resolved, FleetError> {
        let name = reference.to_string();
        let fail = |error| FleetError::Registry { reference: name.clone(), error };
        let (signatures, signed_by) = self.check_signature(reference, downloads, top).await?;
        let document = parse(reference, "the manifest", top_bytes)?;
        let wanted = Wanted {
            engine: self.engine.clone(),
            can_compile: cfg!(not(target_arch = "arm")),
            signed: signed_by.is_some(),
        };
        let manifest = downloads.manifest_to_run(reference, document, &wanted).await?;
        let (layer, precompiled) = layer_to_run(reference, &manifest, &wanted)?;
        let artifact = descriptor_digest(reference, &layer.digest)?;
        if layer.size > MAX_ARTIFACT_BYTES {
            let what = format!("layer {artifact}");
            return Err(FleetError::TooLarge { reference: name, what, size: layer.size, limit: MAX_ARTIFACT_BYTES });
        }
        let path = self.cache.blob_path(&artifact);
        if !self.cache.verified(&artifact) {
            self.blob_downloads.fetch_add(1, Ordering::Relaxed);
            downloads.registry.blob_to_file(&reference.repository, &artifact, layer.size, &path).await.map_err(fail)?;
        }
        let record = Record {
            top: top.to_string(),
            artifact: artifact.to_string(),
            precompiled,
            signatures: signatures.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect(),
            resolved_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            refused: None,
        };
        self.cache.save_record(&name, record).map_err(|error| FleetError::Cache { reference: name.clone(), error })?;
        tracing::info!(%reference, %top, %artifact, precompiled, "resolved");
        Ok(Resolved { top: top.clone(), artifact, path, precompiled, offline: false, signed_by })
    }

    /// With trusted keys: the signature blobs of `top` and the key that
    /// verified one of them; without, nothing is checked.
    async fn check_signature(
        &self,
        reference: &OciReference,
        downloads: &Downloads<'_>,
        top: &Digest,
    ) -> Result<(Vec<Vec<u8>>, Option<String>), FleetError> {
        if self.config.trusted_keys.is_empty() {
            return Ok((Vec::new(), None));
        }
        let blobs = downloads.signatures(reference, top).await?;
        let key = signature::verify(top, &blobs, &self.config.trusted_keys)
            .map_err(|error| FleetError::Signature { reference: reference.to_string(), error })?;
        Ok((blobs, Some(key)))
    }

    /// The last verified copy of `reference`, if it is still intact and (with
    /// trusted keys) still signed by one of them.
    fn cached_copy(&self, reference: &OciReference) -> Result<Option<Resolved>, FleetError> {
        let Some(record) = self.cache.record(&reference.to_string()) else { return Ok(None) };
        let top = descriptor_digest(reference, &record.top)?;
        let artifact = descriptor_digest(reference, &record.artifact)?;
        if !self.cache.verified(&artifact) {
            return Ok(None);
        }
        let signed_by = if self.config.trusted_keys.is_empty() {
            None
        } else {
            let blobs: Vec<Vec<u8>> = record.signatures.iter().map(|s| s.as_bytes().to_vec()).collect();
            let key = signature::verify(&top, &blobs, &self.config.trusted_keys)
                .map_err(|error| FleetError::Signature { reference: reference.to_string(), error })?;
            Some(key)
        };
        if record.precompiled && signed_by.is_none() {
            return Ok(None);
        }
        let path = self.cache.blob_path(&artifact);
        Ok(Some(Resolved { top, artifact, path, precompiled: record.precompiled, offline: true, signed_by }))
    }

    /// A client for `registry`, with its credentials when configured.
    pub fn registry(&self, registry: &str) -> Result<Registry, RegistryError> {
        let insecure = self.config.insecure_registries.iter().any(|r| r == registry);
        let credentials = self.config.credentials.get(registry).and_then(|c| {
            let password = self.secrets.as_ref()?.value(&c.password_secret)?;
            Some(Credentials { username: c.username.clone(), password })
        });
        Registry::new(registry, insecure, credentials)
    }
}

/// A followed tag's digest refused for its content.
#[derive(Debug, Clone)]
struct ContentRefusal {
    digest: Digest,
    /// Refused for its signature (what was said): asked about again, since
    /// a signature can arrive after the tag. `None`: refused for good.
    signature: Option<String>,
}

/// Whether a pull remembers a digest refused for its content.
#[derive(Clone, Copy, PartialEq)]
enum Remember {
    /// The start path: a refusal falls back to the cached copy, and the
    /// follower asks again (and shows why).
    Nothing,
    /// The follower: a refused digest is not fetched again.
    Refusals,
}

/// Downloads for one pull, counted.
struct Downloads<'a> {
    fleet: &'a Fleet,
    registry: &'a Registry,
}

impl Downloads<'_> {
    async fn manifest(&self, reference: &OciReference, at: &str) -> Result<registry::Fetched, FleetError> {
        let name = reference.to_string();
        let fetched = self.registry.manifest(&reference.repository, at, MAX_MANIFEST_BYTES).await;
        match fetched {
            Ok(Some(fetched)) => Ok(fetched),
            Ok(None) => Err(FleetError::Registry {
                reference: name,
                error: RegistryError::NotFound {
                    registry: reference.registry.clone(),
                    what: format!("manifest {}:{at}; publish it with `wattedge publish`", reference.repository),
                },
            }),
            Err(error) => Err(FleetError::Registry { reference: name, error }),
        }
    }

    /// The manifest to run from `document`: itself when it is a manifest,
    /// else the one [`manifest::select`] chooses from the index, fetched and
    /// checked against its digest.
    async fn manifest_to_run(
        &self,
        reference: &OciReference,
        document: Document,
        wanted: &Wanted,
    ) -> Result<Document, FleetError> {
        if !document.is_index() {
            return Ok(document);
        }
        let chosen = manifest::select(&document, wanted)
            .map_err(|error| FleetError::Select { reference: reference.to_string(), error })?;
        let digest = descriptor_digest(reference, &chosen.digest)?;
        let fetched = self.manifest(reference, &digest.to_string()).await?;
        registry_check(reference, "the chosen manifest", &digest, &Digest::of(&fetched.bytes))?;
        parse(reference, "the chosen manifest", &fetched.bytes)
    }

    /// The signature blobs stored for `top` (none when it is unsigned).
    async fn signatures(&self, reference: &OciReference, top: &Digest) -> Result<Vec<Vec<u8>>, FleetError> {
        let name = reference.to_string();
        let fail = |error| FleetError::Registry { reference: name.clone(), error };
        let tag = signature::signature_tag(top);
        let Some(fetched) =
            self.registry.manifest(&reference.repository, &tag, MAX_MANIFEST_BYTES).await.map_err(fail)?
        else {
            return Ok(Vec::new());
        };
        let document = parse(reference, "the signature manifest", &fetched.bytes)?;
        let mut blobs = Vec::new();
        let layers = document.layers.iter().filter(|l| l.media_type == manifest::SIGNATURE_LAYER);
        for layer in layers.take(signature::MAX_SIGNATURES) {
            let digest = descriptor_digest(reference, &layer.digest)?;
            self.fleet.blob_downloads.fetch_add(1, Ordering::Relaxed);
            let blob = self
                .registry
                .small_blob(&reference.repository, &digest, signature::MAX_SIGNATURE_BYTES)
                .await
                .map_err(fail)?;
            blobs.push(blob.to_vec());
        }
        Ok(blobs)
    }
}

/// The layer of `manifest` this host runs, and whether it is precompiled:
/// native code only from a signed reference.
fn layer_to_run<'a>(
    reference: &OciReference,
    manifest: &'a Document,
    wanted: &Wanted,
) -> Result<(&'a manifest::Descriptor, bool), FleetError> {
    let refuse = |error| Err(FleetError::Select { reference: reference.to_string(), error });
    match (manifest.layer(manifest::ARTIFACT_LAYER), manifest.layer(manifest::WASM_LAYER)) {
        (Some(artifact), _) if wanted.signed => Ok((artifact, true)),
        (_, Some(wasm)) => Ok((wasm, false)),
        (Some(_), None) => refuse(SelectError::ArtifactUnsigned),
        (None, None) => refuse(SelectError::NoWasm),
    }
}

/// The digest of what the registry served for `reference` must be the one
/// pinned, and the one the registry says it is.
fn check_top(reference: &OciReference, top: &Digest, header: Option<&str>) -> Result<(), FleetError> {
    if let Some(pinned) = &reference.digest {
        registry_check(reference, "the manifest", pinned, top)?;
    }
    match header.map(Digest::parse) {
        Some(Ok(claimed)) => registry_check(reference, "the manifest", &claimed, top),
        // Another algorithm, or none: the bytes' own digest stands.
        _ => Ok(()),
    }
}

fn registry_check(reference: &OciReference, what: &str, expected: &Digest, actual: &Digest) -> Result<(), FleetError> {
    if expected == actual {
        return Ok(());
    }
    Err(FleetError::Registry {
        reference: reference.to_string(),
        error: RegistryError::DigestMismatch {
            registry: reference.registry.clone(),
            what: what.into(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        },
    })
}

fn descriptor_digest(reference: &OciReference, text: &str) -> Result<Digest, FleetError> {
    Digest::parse(text).map_err(|e| FleetError::Malformed {
        reference: reference.to_string(),
        what: "a descriptor".into(),
        detail: e.to_string(),
    })
}

fn parse(reference: &OciReference, what: &str, bytes: &[u8]) -> Result<Document, FleetError> {
    Document::parse(bytes).map_err(|e| FleetError::Malformed {
        reference: reference.to_string(),
        what: what.into(),
        detail: e.to_string(),
    })
}
