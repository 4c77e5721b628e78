//! The `status` capability: the guest's own health report and counters,
//! kept host-side so they survive restarts and swaps and can be reset by the
//! admin API.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::bindings::status::{self as wit, CounterValue as WitCounter, Health as WitHealth};

/// Longest health text or counter name/text kept from a guest.
const MAX_TEXT: usize = 2048;
/// Most counters one guest may keep.
const MAX_COUNTERS: usize = 128;

/// The guest's self-reported health.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    Ok,
    Standby(String),
    Degraded(String),
}

/// A guest counter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Counter {
    Count(u64),
    Gauge(f64),
    /// Nanoseconds since the epoch.
    Time(i64),
    Text(String),
}

impl Counter {
    /// The JSON form used by `/guests`: times become RFC 3339 strings.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Counter::Count(n) => (*n).into(),
            Counter::Gauge(g) => serde_json::Number::from_f64(*g).map(Into::into).unwrap_or(serde_json::Value::Null),
            Counter::Time(ns) => crate::timefmt::rfc3339_ns(*ns).into(),
            Counter::Text(t) => t.clone().into(),
        }
    }
}

#[derive(Default)]
struct Board {
    health: Option<Health>,
    counters: BTreeMap<String, Counter>,
}

/// What a guest reported, read by the supervisor for snapshots.
#[derive(Default)]
pub struct StatusBoard {
    inner: Mutex<Board>,
}

impl StatusBoard {
    /// The last health report, if any.
    pub fn health(&self) -> Option<Health> {
        self.inner.lock().expect("status lock").health.clone()
    }

    /// A copy of the counters.
    pub fn counters(&self) -> BTreeMap<String, Counter> {
        self.inner.lock().expect("status lock").counters.clone()
    }

    /// Clears the guest's counters (admin reset).
    pub fn reset_counters(&self) {
        self.inner.lock().expect("status lock").counters.clear();
    }

    fn set(&self, name: String, value: Counter) {
        let mut board = self.inner.lock().expect("status lock");
        if board.counters.len() < MAX_COUNTERS || board.counters.contains_key(&name) {
            board.counters.insert(clip(name), value);
        }
    }
}

/// `text` cut to at most 2 KiB (on a character boundary): guest text the
/// host keeps or logs.
pub(crate) fn clip(mut text: String) -> String {
    let kept = super::cut(&text, MAX_TEXT).len();
    text.truncate(kept);
    text
}

impl wit::Host for super::GuestCtx {
    fn report(&mut self, health: WitHealth) {
        let health = match health {
            WitHealth::Ok => Health::Ok,
            WitHealth::Standby(t) => Health::Standby(clip(t)),
            WitHealth::Degraded(t) => Health::Degraded(clip(t)),
        };
        self.shared.board.inner.lock().expect("status lock").health = Some(health);
    }

    fn set_counter(&mut self, name: String, value: WitCounter) {
        let value = match value {
            WitCounter::Count(n) => Counter::Count(n),
            WitCounter::Gauge(g) => Counter::Gauge(g),
            WitCounter::Time(t) => Counter::Time(t),
            WitCounter::Text(t) => Counter::Text(clip(t)),
        };
        self.shared.board.set(name, value);
    }

    fn increment(&mut self, name: String, by: u64) {
        let current = match self.shared.board.inner.lock().expect("status lock").counters.get(&name) {
            Some(Counter::Count(n)) => *n,
            _ => 0,
        };
        self.shared.board.set(name, Counter::Count(current.saturating_add(by)));
    }

    fn counter(&mut self, name: String) -> Option<WitCounter> {
        let board = self.shared.board.inner.lock().expect("status lock");
        board.counters.get(&name).map(|c| match c.clone() {
            Counter::Count(n) => WitCounter::Count(n),
            Counter::Gauge(g) => WitCounter::Gauge(g),
            Counter::Time(t) => WitCounter::Time(t),
            Counter::Text(t) => WitCounter::Text(t),
        })
    }
}
