//! Shared code for every wattedge guest component.
//!
//! This crate owns the one place where the `wattedge:runtime@0.1.0` world
//! (`wit/`) is turned into Rust bindings, so the three product guests and the
//! test probe all agree on the same generated types. It also holds the
//! helpers they would otherwise copy: typed config parsing with errors that
//! name the key ([`config`]), wall-clock time and host-yielding sleep
//! ([`clock`]), one outbound `wasi:http` exchange with capture rules
//! ([`http`]), and health/counter reporting including the "credentials
//! needed" standby text ([`report`]).
//!
//! A guest crate implements [`Guest`] and exports it with:
//!
//! ```ignore
//! wattedge_guest::export_guest!(MyGuest with_types_in wattedge_guest::bindings);
//! ```
//!
//! (`wattedge_guest::export_guest!(MyGuest)` is the same thing: the bindings
//! module is the macro's default.)

pub mod clock;
pub mod config;
pub mod http;
pub mod report;
pub mod table;

/// The generated bindings for world `guest` of `wattedge:runtime@0.1.0`.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "guest",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_guest",
        default_bindings_module: "wattedge_guest::bindings",
        additional_derives: [PartialEq],
        generate_all,
    });
}

use std::sync::Mutex;

pub use bindings::wattedge::runtime::{influx, log, schedule, secrets, state, status, types};
pub use bindings::{Guest, export_guest};
pub use types::{FieldValue, GuestError, Point, Summary, Timestamp, Trigger};
/// The plain WASI bindings, for what the helpers here do not cover.
#[cfg(target_arch = "wasm32")]
pub use wasip2;

/// The structured influx query record (WIT `influx.series-query`). Guests use
/// this alias so a rename in the WIT touches one line.
pub type InfluxQuery = influx::SeriesQuery;

/// A readable text for an influx error, e.g. `unavailable: connection refused`.
pub fn influx_error_text(error: &influx::InfluxError) -> String {
    match error {
        influx::InfluxError::Denied(m) => format!("denied: {m}"),
        influx::InfluxError::Invalid(m) => format!("invalid: {m}"),
        influx::InfluxError::Unavailable(m) => format!("unavailable: {m}"),
    }
}

/// A readable text for a state error, e.g. `too large: ...`.
pub fn state_error_text(error: &state::StateError) -> String {
    match error {
        state::StateError::TooLarge(m) => format!("too large: {m}"),
        state::StateError::Io(m) => format!("i/o: {m}"),
    }
}

/// Writes one line to the host's log at `info`.
pub fn log_info(message: &str) {
    log::log(log::Level::Info, message);
}

/// Writes one line to the host's log at `warn`.
pub fn log_warn(message: &str) {
    log::log(log::Level::Warn, message);
}

/// Holds a guest's validated settings between `init` and `run`.
///
/// Exports are plain functions, so per-instance data lives in a static; a
/// component instance is single-threaded, the mutex only satisfies `Sync`.
pub struct Slot<T>(Mutex<Option<T>>);

impl<T: Clone> Slot<T> {
    /// An empty slot.
    pub const fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// Replaces the stored value.
    pub fn set(&self, value: T) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *guard = Some(value);
    }

    /// A copy of the stored value, or an error when `init` has not succeeded.
    pub fn get(&self) -> Result<T, GuestError> {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        guard.clone().ok_or_else(|| GuestError::Internal("run called before a successful init".into()))
    }
}

impl<T: Clone> Default for Slot<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The numeric value of a field, if it is a number.
pub fn field_as_f64(value: &FieldValue) -> Option<f64> {
    match value {
        FieldValue::Float(v) => Some(*v),
        FieldValue::Integer(v) => Some(*v as f64),
        FieldValue::Unsigned(v) => Some(*v as f64),
        FieldValue::Boolean(_) | FieldValue::Text(_) => None,
    }
}

/// A field value rendered as text (for use as a tag value).
pub fn field_as_text(value: &FieldValue) -> String {
    match value {
        FieldValue::Float(v) => v.to_string(),
        FieldValue::Integer(v) => v.to_string(),
        FieldValue::Unsigned(v) => v.to_string(),
        FieldValue::Boolean(v) => v.to_string(),
        FieldValue::Text(v) => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_before_init_is_an_error() {
        let slot: Slot<u32> = Slot::new();
        assert!(matches!(slot.get(), Err(GuestError::Internal(_))));
        slot.set(7);
        assert_eq!(slot.get(), Ok(7));
    }

    #[test]
    fn error_texts() {
        let e = influx::InfluxError::Unavailable("connection refused".into());
        assert_eq!(influx_error_text(&e), "unavailable: connection refused");
        let e = state::StateError::TooLarge("value over 64 KiB".into());
        assert_eq!(state_error_text(&e), "too large: value over 64 KiB");
    }

    #[test]
    fn fields_convert() {
        assert_eq!(field_as_f64(&FieldValue::Integer(-3)), Some(-3.0));
        assert_eq!(field_as_f64(&FieldValue::Text("x".into())), None);
        assert_eq!(field_as_text(&FieldValue::Text("on".into())), "on");
        assert_eq!(field_as_text(&FieldValue::Float(1.5)), "1.5");
    }
}
