//! `wattedge publish` and `wattedge keygen`: the build machine's side of
//! a fleet (feature `publish`, left out of board builds).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::oci::OciReference;
use crate::oci::signature::signing::SigningKey;

/// `keygen PATH`: the private key never touches the command line or the
/// log; only the public key is printed.
pub fn keygen(path: &Path) -> anyhow::Result<ExitCode> {
    let public = SigningKey::generate(path)?;
    println!("{public}");
    eprintln!(
        "private key: {} (mode 0600; keep it off the boards)\npublic key: {}\non each board, in [fleet]: trusted_keys = [\"{public}\"]",
        path.display(),
        path.with_extension("pub").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The arguments of `publish`.
#[cfg(not(target_arch = "arm"))]
pub struct PublishArgs {
    pub wasm: PathBuf,
    pub reference: String,
    pub profiles: Vec<String>,
    pub sign: Option<PathBuf>,
    pub insecure: bool,
}

/// `publish WASM oci://…`: registry settings and credentials come from the
/// config's `[fleet]` when there is a config file.
#[cfg(not(target_arch = "arm"))]
pub async fn publish(config_path: &Path, args: PublishArgs) -> anyhow::Result<ExitCode> {
    let reference = OciReference::parse(&args.reference)?;
    let profiles = args.profiles.iter().map(|p| crate::compile::board::profile(p)).collect::<Result<Vec<_>, _>>()?;
    // The key is read before anything is pushed: a wrong path fails early.
    let signer = args.sign.as_deref().map(SigningKey::read).transpose()?;
    let registry = registry_for(config_path, &reference, args.insecure)?;
    let wasm = args.wasm.clone();
    let parts = tokio::task::spawn_blocking(move || {
        crate::fleet::publish::build(&wasm, &profiles, |step| eprintln!("{step}..."))
    })
    .await
    .context("the compile task failed")??;
    let published =
        crate::fleet::publish::push(&registry, &reference, parts, signer.as_ref(), |step| eprintln!("{step}..."))
            .await?;
    for (label, digest, size) in &published.manifests {
        eprintln!("  {label}: {digest} ({size} bytes)");
    }
    let signed = published.signed_by.map(|key| format!(", signed by key {key}")).unwrap_or_default();
    println!("{reference} -> {}{signed}", published.index);
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(target_arch = "arm"))]
fn registry_for(
    config_path: &Path,
    reference: &OciReference,
    insecure: bool,
) -> anyhow::Result<crate::fleet::registry::Registry> {
    let mut config = match config_path.exists() {
        true => Some(crate::config::Config::load(config_path)?),
        false => None,
    };
    match config.as_mut() {
        Some(config) => {
            if insecure {
                config.fleet.insecure_registries.push(reference.registry.clone());
            }
            let secrets = crate::secrets::SecretStore::open(&config.host.secrets_file).ok().map(Arc::new);
            Ok(crate::fleet::Fleet::new(config, secrets).registry(&reference.registry)?)
        }
        None => Ok(crate::fleet::registry::Registry::new(&reference.registry, insecure, None)?),
    }
}
