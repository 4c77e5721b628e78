//! What several layers say about OCI registries, and nothing that talks to
//! one: `oci://` references and digests (config parses them, compile names
//! them in a component source, `fleet` resolves them) and Ed25519 signatures
//! over an index digest (config reads trusted keys, `fleet` verifies and
//! `publish` signs). A leaf, so that config and compile need not depend on
//! `fleet`, which depends on both.

pub mod reference;
pub mod signature;

pub use reference::{Digest, OCI_PREFIX, OciReference, ReferenceError};
