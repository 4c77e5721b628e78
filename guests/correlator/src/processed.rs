//! The set of events already handled, kept in guest `state` so each event
//! yields at most one correlation point across runs, restarts and swaps.
//!
//! An entry is `(event time, hash of entity_id)`: 16 bytes, so the set stays
//! far below the 64 KiB state value limit. Entries older than the lookback
//! window plus a margin are pruned: such events are never queried again.
//!
//! When more events than [`MAX_ENTRIES`] are handled inside one window, the
//! oldest entries are evicted and a *floor* remembers the newest evicted
//! time: every event at or before it counts as handled. Events are judged
//! oldest first and only the newest can still be pending, so the floor never
//! passes an unhandled event (and [`Processed::prune`] is told the oldest
//! event whose point is still unwritten).

use std::collections::HashSet;

/// State key holding the encoded set.
pub const STATE_KEY: &str = "processed";
/// Most entries kept (16 bytes each plus the header stays under 64 KiB).
pub const MAX_ENTRIES: usize = 4000;
const MAGIC: &[u8; 4] = b"wcp2";
/// The first format: entries only, no floor.
const MAGIC_V1: &[u8; 4] = b"wcp1";

/// Events (entity + time) already written or judged.
#[derive(Clone, Debug, PartialEq)]
pub struct Processed {
    entries: HashSet<(i64, u64)>,
    /// Every event at or before this time is handled.
    floor: i64,
}

impl Default for Processed {
    fn default() -> Self {
        Self { entries: HashSet::new(), floor: i64::MIN }
    }
}

/// FNV-1a hash of an entity id (stable across builds, unlike `DefaultHasher`).
pub fn entity_hash(entity_id: &str) -> u64 {
    entity_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl Processed {
    /// Decodes a stored set; anything unreadable counts as empty (the only
    /// cost is that events still in the window may be correlated again,
    /// which rewrites the same point).
    pub fn decode(bytes: &[u8]) -> Self {
        let (floor, body) = if let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) {
            match rest.split_first_chunk::<8>() {
                Some((floor, body)) => (i64::from_le_bytes(*floor), body),
                None => return Self::default(),
            }
        } else if let Some(body) = bytes.strip_prefix(MAGIC_V1.as_slice()) {
            (i64::MIN, body)
        } else {
            return Self::default();
        };
        let entries = body
            .chunks_exact(16)
            .filter_map(|chunk| {
                let (t, h) = chunk.split_first_chunk::<8>()?;
                Some((i64::from_le_bytes(*t), u64::from_le_bytes(h.try_into().ok()?)))
            })
            .collect();
        Self { entries, floor }
    }

    /// Encodes the set, oldest first.
    pub fn encode(&self) -> Vec<u8> {
        let mut sorted: Vec<_> = self.entries.iter().copied().collect();
        sorted.sort_unstable();
        let mut out = Vec::with_capacity(MAGIC.len() + 8 + sorted.len() * 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.floor.to_le_bytes());
        for (t, h) in sorted {
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&h.to_le_bytes());
        }
        out
    }

    /// Whether the event was handled.
    pub fn contains(&self, entity_id: &str, time: i64) -> bool {
        time <= self.floor || self.entries.contains(&(time, entity_hash(entity_id)))
    }

    /// Marks the event handled; false when it already was.
    pub fn insert(&mut self, entity_id: &str, time: i64) -> bool {
        time > self.floor && self.entries.insert((time, entity_hash(entity_id)))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops entries older than `cutoff`; beyond `max`, evicts the oldest
    /// entries before `unwritten_from` (the oldest event still owed a point)
    /// and raises the floor to the newest evicted time.
    pub fn prune(&mut self, cutoff: i64, max: usize, unwritten_from: i64) {
        self.entries.retain(|(t, _)| *t >= cutoff);
        if self.entries.len() <= max {
            return;
        }
        let mut sorted: Vec<_> = self.entries.iter().copied().collect();
        sorted.sort_unstable();
        // Entries sharing the floor's time are all evicted together.
        let mut evict = sorted.len() - max;
        while evict < sorted.len() && evict > 0 && sorted[evict].0 == sorted[evict - 1].0 {
            evict += 1;
        }
        for entry in sorted[..evict].iter().take_while(|(t, _)| *t < unwritten_from) {
            self.entries.remove(entry);
            self.floor = self.floor.max(entry.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut p = Processed::default();
        assert!(p.insert("switch.kettle", 10));
        assert!(!p.insert("switch.kettle", 10));
        assert!(p.insert("light.hall", 10));
        let q = Processed::decode(&p.encode());
        assert_eq!(p, q);
        assert!(q.contains("switch.kettle", 10));
        assert!(!q.contains("switch.kettle", 11));
        assert_eq!(p.encode().len(), 4 + 8 + 2 * 16);
    }

    #[test]
    fn garbage_decodes_empty() {
        assert!(Processed::decode(b"").is_empty());
        assert!(Processed::decode(b"nonsense").is_empty());
        assert_eq!(Processed::decode(b"wcp1\x01\x02").len(), 0);
    }

    #[test]
    fn prune_by_age_and_size() {
        let mut p = Processed::default();
        for t in 0..10 {
            p.insert("switch.a", t);
        }
        p.prune(5, 100, i64::MAX);
        assert_eq!(p.len(), 5);
        assert!(!p.contains("switch.a", 4), "pruned by age: out of every window");
        p.prune(0, 2, i64::MAX);
        assert_eq!(p.len(), 2);
        assert!(p.contains("switch.a", 9) && p.contains("switch.a", 8));
        assert!(MAGIC.len() + 8 + MAX_ENTRIES * 16 < 64 * 1024);
    }

    #[test]
    fn evicted_events_stay_handled_below_the_floor_and_across_a_restart() {
        let mut p = Processed::default();
        for t in 0..10 {
            p.insert("switch.a", t);
        }
        p.prune(i64::MIN, 4, i64::MAX);
        assert_eq!(p.len(), 4);
        let q = Processed::decode(&p.encode());
        for t in 0..10 {
            assert!(q.contains("switch.b", t) == (t <= 5), "t = {t}: the floor is 5");
            assert!(q.contains("switch.a", t), "t = {t}: handled, evicted or not");
        }
        assert!(!q.contains("switch.b", 6), "above the floor only recorded events count");
    }

    #[test]
    fn the_floor_never_passes_an_unwritten_event() {
        let mut p = Processed::default();
        for t in 0..10 {
            p.insert("switch.a", t);
        }
        p.prune(i64::MIN, 2, 3);
        assert!(!p.contains("switch.b", 3), "the event at 3 still owes a point");
        assert!(p.contains("switch.b", 2));
        assert_eq!(p.len(), 7, "only entries before 3 were evicted");
    }

    #[test]
    fn the_first_format_still_decodes() {
        let mut v1 = MAGIC_V1.to_vec();
        v1.extend_from_slice(&7i64.to_le_bytes());
        v1.extend_from_slice(&entity_hash("switch.a").to_le_bytes());
        let p = Processed::decode(&v1);
        assert!(p.contains("switch.a", 7) && !p.contains("switch.a", 6));
    }
}
