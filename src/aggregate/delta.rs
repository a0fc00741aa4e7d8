//! What one flush writes: rows keyed by resolved dimensions.

use crate::wire::EventType;
use rustc_hash::FxHashMap;
use std::fmt;

use super::normalise::{OS_MAX_LEN, OS_OTHER};
use super::raw::RawRow;

/// A normalised OS name stored inline (it is at most 32 bytes), so that
/// delta keys are `Copy` and merging deltas allocates nothing per row.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OsName {
    len: u8,
    bytes: [u8; OS_MAX_LEN],
}

impl OsName {
    /// Wraps an already normalised name.
    ///
    /// # Panics
    ///
    /// If `name` is longer than 32 bytes (normalisation guarantees it is not).
    pub fn new(name: &str) -> OsName {
        assert!(name.len() <= OS_MAX_LEN, "OS names are normalised to 32 bytes");
        let mut bytes = [0u8; OS_MAX_LEN];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        OsName { len: name.len() as u8, bytes }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("built from a str")
    }
}

impl fmt::Debug for OsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// One rollup row's key, as written to `rollup_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    /// Minutes since the Unix epoch (the bucket).
    pub minute: i64,
    /// Event type.
    pub event_type: EventType,
    /// Normalised country (`--` when unknown).
    pub country: [u8; 2],
    /// Normalised OS.
    pub os: OsName,
    /// Campaign id; 0 = none, -1 = folded.
    pub campaign: i64,
    /// Advertiser id; 0 = none, -1 = folded.
    pub advertiser: i64,
}

impl RowKey {
    /// The key that over-cap combinations of this bucket, type and country
    /// fold into: OS `other`, campaign and advertiser `-1`.
    pub fn folded(&self) -> RowKey {
        RowKey { os: OsName::new(OS_OTHER), campaign: -1, advertiser: -1, ..*self }
    }

    /// The country as text.
    pub fn country_str(&self) -> &str {
        std::str::from_utf8(&self.country).unwrap_or("--")
    }
}

/// The additive measures of one row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events counted.
    pub events: u64,
    /// Of those, carrying `attributed = true`.
    pub attributed: u64,
    /// Sum of `price`, micro-USD.
    pub price: i64,
    /// Sum of `revenue`, micro-USD.
    pub revenue: i64,
}

impl Counters {
    /// Adds `other` into `self`. Sums wrap rather than panic: a publisher
    /// sending absurd prices must not be able to crash the logger.
    #[inline]
    pub fn add(&mut self, other: &Counters) {
        self.events += other.events;
        self.attributed += other.attributed;
        self.price = self.price.wrapping_add(other.price);
        self.revenue = self.revenue.wrapping_add(other.revenue);
    }
}

/// Rows to add to the warehouse, keyed so that a key never repeats.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    /// One entry per minute bucket and dimension combination.
    pub rows: FxHashMap<RowKey, Counters>,
    /// Total events in `rows` (the sum of `events`).
    pub events: u64,
    /// Raw rows for `events_sample`.
    pub raw: Vec<RawRow>,
}

/// What merging had to give up to stay within its bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeLoss {
    /// Events folded into `other`/`-1` (still counted, less detailed).
    pub folded_events: u64,
    /// Raw rows dropped because the raw buffer was full.
    pub raw_dropped: u64,
}

impl Delta {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.raw.is_empty()
    }

    /// Adds one row; once `max_rows` distinct keys are held, a new key is
    /// folded (see [`RowKey::folded`]) so memory stays bounded while totals
    /// per bucket and type stay exact. Returns whether it was folded.
    pub fn add(&mut self, key: RowKey, counters: &Counters, max_rows: usize) -> bool {
        self.events += counters.events;
        if let Some(c) = self.rows.get_mut(&key) {
            c.add(counters);
            return false;
        }
        let (key, folded) = if self.rows.len() >= max_rows { (key.folded(), true) } else { (key, false) };
        self.rows.entry(key).or_default().add(counters);
        folded
    }

    /// Takes at most `max_rows` rows and `max_raw` raw rows out of `self`
    /// into a delta of their own (all of it when it is small enough).
    pub fn split_off(&mut self, max_rows: usize, max_raw: usize) -> Delta {
        if self.rows.len() <= max_rows && self.raw.len() <= max_raw {
            return std::mem::take(self);
        }
        let keys: Vec<RowKey> = self.rows.keys().take(max_rows).copied().collect();
        let mut part = Delta::default();
        for key in keys {
            let counters = self.rows.remove(&key).expect("key taken from the map");
            part.events += counters.events;
            part.rows.insert(key, counters);
        }
        self.events -= part.events;
        let raw_taken = self.raw.len().min(max_raw);
        part.raw = self.raw.drain(..raw_taken).collect();
        part
    }

    /// Merges `other` into `self`: rows under the `max_rows` cap (folding),
    /// raw rows up to `max_raw` (dropping the excess).
    pub fn merge(&mut self, other: Delta, max_rows: usize, max_raw: usize) -> MergeLoss {
        let mut loss = MergeLoss::default();
        if self.is_empty() {
            *self = other;
        } else {
            for (key, counters) in other.rows {
                if self.add(key, &counters, max_rows) {
                    loss.folded_events += counters.events;
                }
            }
            self.raw.extend(other.raw);
        }
        if self.raw.len() > max_raw {
            loss.raw_dropped = (self.raw.len() - max_raw) as u64;
            self.raw.truncate(max_raw);
        }
        loss
    }
}
