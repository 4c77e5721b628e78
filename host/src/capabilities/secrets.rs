//! The `secrets` capability: a guest may ask whether a granted secret is set
//! and arm capture rules, but never read a value.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bindings::secrets::{self as wit, SecretError};
use crate::config::Grants;
use crate::secrets::SecretStore;

/// A capture rule armed by the guest, applied by the HTTP gate to the
/// response of the guest's next request.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureRule {
    pub pointer: String,
    pub secret: String,
    pub ttl: Option<Duration>,
    pub persist: bool,
}

/// One guest's view of the secrets store.
pub struct SecretsCap {
    guest: Arc<str>,
    store: Arc<SecretStore>,
    /// Secret name → hosts it may be sent to.
    grants: BTreeMap<String, Vec<String>>,
    /// Rules for the next outgoing request's response.
    pub(crate) armed: Arc<Mutex<Vec<CaptureRule>>>,
}

impl SecretsCap {
    pub fn new(guest: Arc<str>, grants: &Grants, store: Arc<SecretStore>) -> SecretsCap {
        SecretsCap { guest, store, grants: grants.secrets.clone(), armed: Arc::default() }
    }

    /// Hosts `name` may be sent to, if it is granted at all.
    pub fn hosts_for(&self, name: &str) -> Option<&[String]> {
        self.grants.get(name).map(Vec::as_slice)
    }

    /// The store, for the egress path.
    pub fn store(&self) -> &Arc<SecretStore> {
        &self.store
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

    fn arm_capture(&mut self, rules: Vec<wit::CaptureRule>) -> Result<(), SecretError> {
        let mut checked = Vec::with_capacity(rules.len());
        for rule in rules {
            self.secrets.check_granted(&rule.secret, &self.shared)?;
            if !(rule.pointer.is_empty() || rule.pointer.starts_with('/')) {
                return Err(SecretError::Invalid(format!(
                    "capture pointer {:?} is not a JSON pointer; it must start with '/'",
                    rule.pointer
                )));
            }
            checked.push(CaptureRule {
                pointer: rule.pointer,
                secret: rule.secret,
                ttl: rule.ttl_seconds.map(Duration::from_secs),
                persist: rule.persist,
            });
        }
        *self.secrets.armed.lock().expect("capture lock") = checked;
        Ok(())
    }

    fn forget(&mut self, name: String) -> Result<(), SecretError> {
        self.secrets.check_granted(&name, &self.shared)?;
        self.secrets.store.forget(&name).map_err(|e| {
            SecretError::Invalid(format!("could not forget {name}: {}", e.to_string().replace(&name, "<name>")))
        })
    }
}
