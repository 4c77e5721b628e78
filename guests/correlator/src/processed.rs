//! The set of events already handled, kept in guest `state` so each event
//! yields at most one correlation point across runs, restarts and swaps.
//!
//! An entry is `(event time, hash of entity_id)`: 16 bytes, so the set stays
//! far below the 64 KiB state value limit. Entries older than the lookback
//! window plus a margin are pruned: such events are never queried again.

use std::collections::HashSet;

/// State key holding the encoded set.
pub const STATE_KEY: &str = "processed";
/// Most entries kept (16 bytes each plus the header stays under 64 KiB).
pub const MAX_ENTRIES: usize = 4000;
const MAGIC: &[u8; 4] = b"wcp1";

/// Events (entity + time) already written or judged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Processed {
    entries: HashSet<(i64, u64)>,
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
        let mut entries = HashSet::new();
        if let Some(body) = bytes.strip_prefix(MAGIC.as_slice()) {
            for chunk in body.chunks_exact(16) {
                let (t, h) = chunk.split_at(8);
                if let (Ok(t), Ok(h)) = (<[u8; 8]>::try_from(t), <[u8; 8]>::try_from(h)) {
                    entries.insert((i64::from_le_bytes(t), u64::from_le_bytes(h)));
                }
            }
        }
        Self { entries }
    }

    /// Encodes the set, oldest first.
    pub fn encode(&self) -> Vec<u8> {
        let mut sorted: Vec<_> = self.entries.iter().copied().collect();
        sorted.sort_unstable();
        let mut out = Vec::with_capacity(MAGIC.len() + sorted.len() * 16);
        out.extend_from_slice(MAGIC);
        for (t, h) in sorted {
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&h.to_le_bytes());
        }
        out
    }

    /// Whether the event was handled.
    pub fn contains(&self, entity_id: &str, time: i64) -> bool {
        self.entries.contains(&(time, entity_hash(entity_id)))
    }

    /// Marks the event handled; false when it already was.
    pub fn insert(&mut self, entity_id: &str, time: i64) -> bool {
        self.entries.insert((time, entity_hash(entity_id)))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops entries older than `cutoff`, then the oldest beyond `max`.
    pub fn prune(&mut self, cutoff: i64, max: usize) {
        self.entries.retain(|(t, _)| *t >= cutoff);
        if self.entries.len() > max {
            let mut sorted: Vec<_> = self.entries.iter().copied().collect();
            sorted.sort_unstable();
            let excess = sorted.len() - max;
            for entry in &sorted[..excess] {
                self.entries.remove(entry);
            }
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
        assert_eq!(p.encode().len(), 4 + 2 * 16);
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
        p.prune(5, 100);
        assert_eq!(p.len(), 5);
        assert!(!p.contains("switch.a", 4));
        p.prune(0, 2);
        assert_eq!(p.len(), 2);
        assert!(p.contains("switch.a", 9) && p.contains("switch.a", 8));
        assert!(MAGIC.len() + MAX_ENTRIES * 16 < 64 * 1024);
    }
}
