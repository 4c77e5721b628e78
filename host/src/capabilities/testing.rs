//! Capabilities without wasm, for unit tests: [`TestGuest`] is a
//! [`GuestCtx`] built from a guest's grants over real host services (the
//! embedded store, a secrets file and the state store in a temp dir), so a
//! capability's host functions can be called directly through the generated
//! `Host` traits, with no component compiled or instantiated.

use std::path::Path;
use std::sync::Arc;

use super::{GuestCtx, GuestShared, HostServices};
use crate::config::Config;

/// The name of the guest a [`TestGuest`] plays.
pub const GUEST: &str = "g";

/// One guest's context and the host services behind it.
pub struct TestGuest {
    /// What the generated `Host` traits are implemented for.
    pub ctx: GuestCtx,
    /// The store, secrets and state the context reaches (to seed or read back).
    pub services: HostServices,
    pub shared: Arc<GuestShared>,
    /// Holds the services' files until the test ends.
    _dir: tempfile::TempDir,
}

impl TestGuest {
    /// Guest [`GUEST`] with `grants`, the body of its `[guests.g.grants]`
    /// table in the config file's own syntax (e.g. `influx_write = ["m"]`),
    /// so grants are parsed and checked as the host parses them.
    pub fn with_grants(grants: &str) -> TestGuest {
        let dir = tempfile::tempdir().expect("a temp dir for the test guest");
        let config = config(dir.path(), grants);
        let services = services(&config);
        let guest = config.guests.into_iter().next().expect("the config names one guest");
        let shared = Arc::new(GuestShared::default());
        let ctx = GuestCtx::new(&guest, &services, shared.clone());
        TestGuest { ctx, services, shared, _dir: dir }
    }
}

fn config(dir: &Path, grants: &str) -> Config {
    let source = format!(
        "[host]\nstate_dir = \"{}\"\n\n[guests.{GUEST}]\ncomponent = \"builtin:correlator\"\nschedule = \"every 1h\"\n\n[guests.{GUEST}.grants]\n{grants}\n",
        dir.display()
    );
    Config::parse(&dir.join("wattedge.toml"), &source).unwrap_or_else(|e| panic!("test guest config: {e}"))
}

fn services(config: &Config) -> HostServices {
    let dir = &config.host.state_dir;
    let store = crate::store::EmbeddedBackend::open(&dir.join("embedded.redb"), None).expect("embedded store");
    let secrets = crate::secrets::SecretStore::open(&config.host.secrets_file).expect("secrets file");
    let state = super::state::StateStore::open(&dir.join("state.redb")).expect("state store");
    let http = super::http::HttpSettings::new(&config.host.http).expect("default HTTP settings");
    HostServices {
        store: Arc::new(store),
        secrets: Arc::new(secrets),
        state: Arc::new(state),
        http: Arc::new(http),
        host_tags: config.host.identity.tags.clone().into(),
    }
}
