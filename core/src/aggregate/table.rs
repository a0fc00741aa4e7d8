//! The aggregator's hash table: packed `u128` keys to [`Counters`], open
//! addressing with linear probing, and a prefetch.
//!
//! Why not `HashMap`: at a high event rate the table holds 100 000 keys or
//! more per interval, several megabytes, so nearly every event's row is a
//! cache miss. Between two events the ingest thread decodes a message, and
//! those ~100 ns of work keep the CPU from overlapping one event's miss with
//! the next. [`KeyTable::prefetch`] asks for the row's cache line as soon as
//! the key is known, and the aggregator applies the event one event later
//! (see `Aggregator::record_admitted`), when the line has arrived. A standard
//! map has no way to prefetch a slot, and the miss then costs the full
//! memory latency on every event.
//!
//! A slot is empty when its `events` count is 0: every row counts at least
//! one event. The capacity is a power of two, at most three quarters full,
//! and kept across drains, so steady state does not reallocate.

use super::delta::Counters;

/// One slot: a packed key and its counters (48 bytes).
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    key: u128,
    counters: Counters,
}

/// Packed keys to counters; see the module documentation.
#[derive(Debug)]
pub struct KeyTable {
    slots: Vec<Slot>,
    len: usize,
    /// `64 - log2(slots.len())`: a hash's top bits are its home slot.
    shift: u32,
}

/// Slots of a new table.
const INITIAL_SLOTS: usize = 1024;

impl Default for KeyTable {
    fn default() -> Self {
        KeyTable::with_slots(INITIAL_SLOTS)
    }
}

impl KeyTable {
    fn with_slots(slots: usize) -> KeyTable {
        debug_assert!(slots.is_power_of_two());
        KeyTable { slots: vec![Slot::default(); slots], len: 0, shift: 64 - slots.trailing_zeros() }
    }

    /// The hash of `key`: both halves mixed by multiplication, so that the
    /// top bits, which pick the slot, depend on every bit of the key.
    #[inline]
    pub fn hash(key: u128) -> u64 {
        let (hi, lo) = ((key >> 64) as u64, key as u64);
        (lo.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ hi).wrapping_mul(0xd6e8_feb8_6659_fd93)
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize
    }

    /// Starts loading the cache line of `hash`'s home slot.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let slot: *const Slot = &self.slots[self.home(hash)];
            // SAFETY: a prefetch is only a hint; the pointer is to a live slot.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(slot.cast()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = hash;
    }

    /// Rows held.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no row is held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `key` (whose hash is `hash`) has a row.
    #[inline]
    pub fn contains(&self, key: u128, hash: u64) -> bool {
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        loop {
            let slot = &self.slots[i];
            if slot.counters.events == 0 {
                return false;
            }
            if slot.key == key {
                return true;
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds `counters` (which count at least one event) to `key`'s row,
    /// creating it if needed.
    #[inline]
    pub fn add(&mut self, key: u128, hash: u64, counters: &Counters) {
        debug_assert!(counters.events > 0, "an empty row would read as a free slot");
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        loop {
            let slot = &mut self.slots[i];
            if slot.counters.events == 0 {
                *slot = Slot { key, counters: *counters };
                self.len += 1;
                if self.len * 4 > self.slots.len() * 3 {
                    self.grow();
                }
                return;
            }
            if slot.key == key {
                slot.counters.add(counters);
                return;
            }
            i = (i + 1) & mask;
        }
    }

    #[cold]
    fn grow(&mut self) {
        let old = std::mem::replace(self, KeyTable::with_slots(self.slots.len() * 2));
        for slot in old.slots.into_iter().filter(|s| s.counters.events > 0) {
            self.add(slot.key, KeyTable::hash(slot.key), &slot.counters);
        }
    }

    /// Calls `f` with every row and empties the table (keeping its capacity).
    pub fn drain(&mut self, mut f: impl FnMut(u128, Counters)) {
        if self.len == 0 {
            return;
        }
        for slot in &mut self.slots {
            if slot.counters.events > 0 {
                f(slot.key, std::mem::take(slot).counters);
            }
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn one(events: u64, price: i64) -> Counters {
        Counters { events, attributed: 0, price, revenue: 0 }
    }

    #[test]
    fn rows_add_up_across_growth_and_drains_like_a_map() {
        let mut table = KeyTable::default();
        let mut model: HashMap<u128, (u64, i64)> = HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..3 {
            // Keys shaped like the aggregator's: few values in the high half.
            for i in 0..50_000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = (u128::from(x % 7 + (round << 40)) << 64) | u128::from(x % 5_000);
                let hash = KeyTable::hash(key);
                table.prefetch(hash);
                table.add(key, hash, &one(1, i as i64));
                let m = model.entry(key).or_default();
                m.0 += 1;
                m.1 += i as i64;
                assert!(table.contains(key, hash));
            }
            assert_eq!(table.len(), model.len());
            let absent = u128::MAX;
            assert!(!table.contains(absent, KeyTable::hash(absent)));
            let mut drained = HashMap::new();
            table.drain(|k, c| assert!(drained.insert(k, (c.events, c.price)).is_none(), "key {k} twice"));
            assert_eq!(drained, model, "round {round}");
            assert!(table.is_empty());
            model.clear();
        }
    }

    #[test]
    fn capacity_stays_at_most_three_quarters_full_and_is_kept() {
        let mut table = KeyTable::default();
        for k in 0..10_000u128 {
            table.add(k, KeyTable::hash(k), &one(1, 0));
            assert!(table.len() * 4 <= table.slots.len() * 3);
        }
        let slots = table.slots.len();
        table.drain(|_, _| {});
        assert_eq!(table.slots.len(), slots);
        assert!(table.slots.iter().all(|s| s.counters.events == 0));
    }
}
