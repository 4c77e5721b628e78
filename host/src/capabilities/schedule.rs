//! The `schedule` capability: one-shot wake-ups (e.g. for `Retry-After`) on
//! top of the guest's configured schedule.

use std::sync::Mutex;

use crate::bindings::schedule as wit;
use crate::store::Timestamp;

/// The guest's pending wake-up, read by the supervisor after each run.
#[derive(Default)]
pub struct WakeSlot {
    at: Mutex<Option<Timestamp>>,
}

impl WakeSlot {
    /// The pending wake-up time, if any.
    pub fn peek(&self) -> Option<Timestamp> {
        *self.at.lock().expect("wake lock")
    }

    /// Takes the pending wake-up, clearing it.
    pub fn take(&self) -> Option<Timestamp> {
        self.at.lock().expect("wake lock").take()
    }

    fn set(&self, at: Option<Timestamp>) {
        *self.at.lock().expect("wake lock") = at;
    }
}

impl wit::Host for super::GuestCtx {
    fn wake_at(&mut self, at: Timestamp) {
        self.shared.wake.set(Some(at));
    }

    fn cancel_wake(&mut self) {
        self.shared.wake.set(None);
    }
}
