//! `guests.NAME.component`: where a guest's code comes from, checked
//! before anything runs (a missing file, an unknown built-in, a board build
//! asked for a built-in it does not carry); `oci://` references are
//! checked in `fleet`.

use std::path::Path;

use super::{BUILTIN_PREFIX, Checker, ComponentSource, ConfigError};

impl Checker<'_> {
    pub(super) fn missing_component(&self, name: &str) -> ConfigError {
        let grants_only = self.source.contains(&format!("[guests.{name}.grants]"));
        let message = if grants_only {
            format!(
                "[guests.{name}.grants] grants access to a guest that does not exist: there is no guests.{name}.component; fix the guest name or add `component = \"...\"` under [guests.{name}]"
            )
        } else {
            format!(
                "guests.{name} has no `component`; add e.g. component = \"builtin:{name}\" or a path to a .wasm file"
            )
        };
        self.error(&["guests", name, ""], message)
    }

    pub(super) fn component(&self, name: &str, text: &str) -> Result<ComponentSource, ConfigError> {
        if text.starts_with(crate::oci::OCI_PREFIX) {
            return self.oci_component(name, text);
        }
        if let Some(builtin) = text.strip_prefix(BUILTIN_PREFIX) {
            if !crate::builtin::NAMES.contains(&builtin) {
                return Err(self.error(
                    &["guests", name, "component"],
                    format!(
                        "guests.{name}.component = {text:?}: no built-in guest named {builtin:?}; built-ins are {}",
                        crate::builtin::NAMES.iter().map(|n| format!("builtin:{n}")).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            if !crate::builtin::EMBEDDED {
                return Err(self.error(
                    &["guests", name, "component"],
                    format!(
                        "guests.{name}.component = {text:?}: this wattedge is a board build without built-in \
                         guests; on your build machine run `wattedge compile --target <profile>` and set \
                         component to the .cwasm file it writes"
                    ),
                ));
            }
            return Ok(ComponentSource::Builtin(builtin.to_string()));
        }
        let path = self.resolve(Path::new(text));
        if !path.is_file() {
            return Err(self.error(
                &["guests", name, "component"],
                format!(
                    "guests.{name}.component: file {} does not exist; build the component or fix the path (relative paths are relative to the config file)",
                    path.display()
                ),
            ));
        }
        Ok(ComponentSource::File(path))
    }
}
