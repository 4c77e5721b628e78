//! One memory limit per guest: the store's [`ResourceLimiter`].
//!
//! wasmtime's own `StoreLimits` bounds each linear memory and each table on
//! its own, so a component with eight memories (multi-memory, or eight core
//! modules) could take eight times its guest's `memory_limit`. This limiter
//! counts the sum over every memory and table of the store instead, tables
//! at [`TABLE_ELEMENT_BYTES`] per element, and caps how many memories,
//! tables and core instances a store may create. A growth past the limit
//! traps (rather than `memory.grow` returning -1), so a guest that runs out
//! stops with an error that names `memory_limit`.

use wasmtime::ResourceLimiter;

/// What one table element counts toward the limit: a function reference
/// is a pointer plus wasmtime's bookkeeping, stated as 16 bytes whatever
/// the pointer width, so a table costs the same on every board.
pub const TABLE_ELEMENT_BYTES: usize = 16;
/// Most linear memories one guest store may create. A Rust guest has one;
/// eight leave room for hand-written and multi-module components, and bound
/// the address space a store reserves (each memory reserves
/// `memory_reservation`, see `engine`).
pub const MAX_MEMORIES: usize = 8;
/// Most tables one guest store may create (a Rust component has a few,
/// its adapter shims included).
pub const MAX_TABLES: usize = 32;
/// Most core instances one guest store may create (a Rust component has
/// a handful).
pub const MAX_INSTANCES: usize = 32;

/// The limiter of one guest store: its `memory_limit` over the sum of its
/// memories and tables.
#[derive(Debug)]
pub struct GuestLimiter {
    limit: usize,
    /// Bytes of memories and tables granted so far. A store never gives
    /// memory back before it is dropped, and a growth granted here but then
    /// failed in wasmtime stays counted (the error is the guest's anyway).
    used: usize,
    /// What the last granted growth added, taken back if wasmtime then
    /// fails it.
    last: usize,
}

impl GuestLimiter {
    /// A limiter for a guest whose `memory_limit` is `limit` bytes.
    pub fn new(limit: u64) -> GuestLimiter {
        GuestLimiter { limit: usize::try_from(limit).unwrap_or(usize::MAX), used: 0, last: 0 }
    }

    /// Bytes of memories and tables the store holds (as counted here).
    pub fn used(&self) -> usize {
        self.used
    }

    /// Grants growing something from `current` to `desired` bytes, or fails
    /// (a trap in the guest) when the store's total would pass the limit.
    fn grow(&mut self, what: &str, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            // Past the memory's or table's own declared maximum: a plain
            // failure (`memory.grow` gives -1), which counts nothing.
            return Ok(false);
        }
        let added = desired.saturating_sub(current);
        let total = self.used.saturating_add(added);
        if total > self.limit {
            wasmtime::bail!(
                "growing a {what} to {desired} bytes would take the guest's memories and tables to {total} bytes, \
                 over its memory_limit of {} bytes",
                self.limit
            );
        }
        self.used = total;
        self.last = added;
        Ok(true)
    }

    /// A growth granted here failed in wasmtime (out of address space):
    /// uncounts it, and traps, as a refusal does.
    fn failed(&mut self, what: &str, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.used = self.used.saturating_sub(std::mem::take(&mut self.last));
        Err(wasmtime::format_err!("growing a {what} failed within the guest's memory_limit: {error}"))
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow("memory", current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.failed("memory", error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let bytes = |elements: usize| elements.saturating_mul(TABLE_ELEMENT_BYTES);
        self.grow("table", bytes(current), bytes(desired), maximum.map(bytes))
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.failed("table", error)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_limit_is_over_the_sum_of_every_memory_and_table() {
        let mut limiter = GuestLimiter::new(16 << 20);
        assert!(limiter.memory_growing(0, 8 * MIB, None).unwrap(), "a first memory of 8 MiB");
        assert!(limiter.memory_growing(0, 7 * MIB, None).unwrap(), "a second one of 7 MiB: 15 MiB in all");
        let refused = limiter.memory_growing(7 * MIB, 9 * MIB, None).unwrap_err().to_string();
        assert!(refused.contains("memory_limit") && refused.contains("grow"), "{refused}");
        assert_eq!(limiter.used(), 15 * MIB, "a refused growth is not counted");
        let table = limiter.table_growing(0, (MIB / TABLE_ELEMENT_BYTES) + 1, None);
        assert!(table.is_err(), "a table's elements count toward the same limit");
        assert!(limiter.table_growing(0, 1000, None).unwrap());
        assert_eq!(limiter.used(), 15 * MIB + 1000 * TABLE_ELEMENT_BYTES);
    }

    #[test]
    fn a_growth_that_fails_anyway_is_not_counted() {
        let mut limiter = GuestLimiter::new(16 << 20);
        assert!(!limiter.memory_growing(0, 2 * MIB, Some(MIB)).unwrap(), "past its own maximum: -1, no trap");
        assert_eq!(limiter.used(), 0);
        assert!(limiter.memory_growing(0, 4 * MIB, None).unwrap());
        let failed = limiter.memory_grow_failed(wasmtime::format_err!("no address space")).unwrap_err();
        assert!(failed.to_string().contains("memory_limit"), "{failed}");
        assert_eq!(limiter.used(), 0, "the failed growth was taken back");
    }

    #[test]
    fn counts_of_memories_tables_and_instances_are_capped() {
        let limiter = GuestLimiter::new(u64::MAX);
        assert_eq!((limiter.memories(), limiter.tables(), limiter.instances()), (8, 32, 32));
        assert_eq!(GuestLimiter::new(u64::MAX).limit, usize::MAX, "a limit past the address space is no limit");
    }
}
