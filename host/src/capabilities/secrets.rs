//! The `secrets` capability: a guest may ask whether a granted secret is set
//! (and when it expires) or forget it, but never read a value. What the host
//! captures is the operator's rule (`grants.capture`), not the guest's.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::bindings::secrets::{self as wit, SecretError};
use crate::config::Grants;
use crate::config::grants::HostGrant;
use crate::secrets::SecretStore;

/// One guest's view of the secrets store.
pub struct SecretsCap {
    guest: Arc<str>,
    store: Arc<SecretStore>,
    /// Secret name → hosts it may be sent to.
    grants: BTreeMap<String, Vec<HostGrant>>,
}

impl SecretsCap {
    pub fn new(guest: Arc<str>, grants: &Grants, store: Arc<SecretStore>) -> SecretsCap {
        SecretsCap { guest, store, grants: grants.secrets.clone() }
    }

    fn check_granted(&self, name: &str, shared: &super::GuestShared) -> Result<(), SecretError> {
        if self.grants.contains_key(name) {
            return Ok(());
        }
        super::denials::warn_denied!(shared.denials, self.guest, secret = %crate::guest_text::shown(name), "secret not granted");
        Err(SecretError::Denied(format!("secret {name:?} is not in grants.secrets of guest {}", self.guest)))
    }
}

impl wit::Host for super::GuestCtx {
    fn is_set(&mut self, name: String) -> bool {
        self.secrets.grants.contains_key(&name) && self.secrets.store.is_usable(&name)
    }

    fn expires_in(&mut self, name: String) -> Option<u64> {
        if !self.secrets.grants.contains_key(&name) {
            return None;
        }
        self.secrets.store.expires_in(&name).map(|d| d.as_secs())
    }

    fn forget(&mut self, name: String) -> Result<(), SecretError> {
        self.secrets.check_granted(&name, &self.shared)?;
        self.secrets.store.forget(&name).map_err(|e| {
            SecretError::Invalid(format!("could not forget {name}: {}", e.to_string().replace(&name, "<name>")))
        })
    }
}
