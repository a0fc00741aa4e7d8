//! The hot-path aggregator: packed keys, interned OS names, a fast hasher.

use super::delta::{add_up_adjacent, Counters, Delta, OsName, RowKey};
use super::normalise::{normalise_country, normalise_os, OS_MAX_LEN, OS_OTHER, OS_UNKNOWN};
use super::raw::RawRow;
use super::table::KeyTable;
use crate::decode::Event;
use crate::wire::EventType;
use rustc_hash::FxHashMap;

/// Default `max-lateness`: 7 days, in ms.
pub const DEFAULT_MAX_LATENESS_MS: i64 = 7 * 24 * 3600 * 1000;
/// Default `max-future-skew`: 5 minutes, in ms.
pub const DEFAULT_MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;
/// Default `max-live-keys`.
pub const DEFAULT_MAX_LIVE_KEYS: usize = 1_000_000;
/// Default `max-os-values`.
pub const DEFAULT_MAX_OS_VALUES: usize = 1_000;
/// Default `raw-buffer-rows`.
pub const DEFAULT_MAX_RAW_ROWS: usize = 1_000_000;

/// Settings of the aggregation stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateConfig {
    /// Events older than this (event time vs. now), in ms, are rejected.
    pub max_lateness_ms: i64,
    /// Events further than this in the future, in ms, are rejected.
    pub max_future_skew_ms: i64,
    /// Cap on distinct keys held between two flushes; new keys beyond it fold.
    pub max_live_keys: usize,
    /// Cap on distinct OS strings between two flushes; more fold into `other`.
    pub max_os_values: usize,
    /// Cap on raw rows held; beyond it raw rows are dropped (and counted).
    pub max_raw_rows: usize,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            max_lateness_ms: DEFAULT_MAX_LATENESS_MS,
            max_future_skew_ms: DEFAULT_MAX_FUTURE_SKEW_MS,
            max_live_keys: DEFAULT_MAX_LIVE_KEYS,
            max_os_values: DEFAULT_MAX_OS_VALUES,
            max_raw_rows: DEFAULT_MAX_RAW_ROWS,
        }
    }
}

/// What [`Aggregator::record`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted.
    Accepted,
    /// Older than the maximum lateness: dropped.
    Late,
    /// Further in the future than the maximum skew: dropped.
    Future,
}

/// Counts kept locally on the hot path and published in batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AggregateStats {
    /// Accepted events per [`EventType::index`].
    pub accepted: [u64; 8],
    /// Rejected as too late.
    pub late: u64,
    /// Rejected as too far in the future.
    pub future: u64,
    /// Accepted but folded into `other`/`-1` by a cardinality cap.
    pub folded: u64,
    /// Raw rows taken for `events_sample`.
    pub raw: u64,
    /// Raw rows dropped because the raw buffer was full.
    pub raw_dropped: u64,
}

/// A packed key: `minute:32 | type:4 | country:11 | os:16 | folded:1` in the
/// high 64 bits, `campaign:32 | advertiser:32` in the low ones. One `u128`
/// hashes in two multiplies ([`KeyTable::hash`]) and compares in two
/// instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key(u128);

const FOLDED: u128 = 1 << 64;

impl Key {
    #[inline]
    fn new(minute: u32, event_type: EventType, country: u16, os: u16, campaign: u32, advertiser: u32) -> Key {
        let hi =
            (u64::from(minute) << 32) | ((event_type as u64) << 28) | (u64::from(country) << 17) | (u64::from(os) << 1);
        Key((u128::from(hi) << 64) | (u128::from(campaign) << 32) | u128::from(advertiser))
    }

    /// Same bucket, type and country; OS `other`; ids `-1`.
    #[inline]
    fn folded(self) -> Key {
        let keep = self.0 & !((0xffff_u128 << 65) | 0xffff_ffff_ffff_ffff_u128);
        Key(keep | (u128::from(OS_OTHER_ID) << 65) | FOLDED)
    }

    fn unpack(self) -> (u32, u8, u16, u16, bool, u32, u32) {
        let hi = (self.0 >> 64) as u64;
        let lo = self.0 as u64;
        (
            (hi >> 32) as u32,
            ((hi >> 28) & 0xf) as u8,
            ((hi >> 17) & 0x7ff) as u16,
            ((hi >> 1) & 0xffff) as u16,
            hi & 1 == 1,
            (lo >> 32) as u32,
            lo as u32,
        )
    }
}

const OS_UNKNOWN_ID: u16 = 0;
const OS_OTHER_ID: u16 = 1;

#[inline]
fn country_code(c: [u8; 2]) -> u16 {
    if c == *b"--" {
        0
    } else {
        1 + u16::from(c[0] - b'A') * 26 + u16::from(c[1] - b'A')
    }
}

fn country_of(code: u16) -> [u8; 2] {
    if code == 0 {
        *b"--"
    } else {
        let c = code - 1;
        [b'A' + (c / 26) as u8, b'A' + (c % 26) as u8]
    }
}

/// OS strings interned to small ids for the packed key. Bounded: beyond
/// `cap` distinct values everything new is `other`. Reset at every drain, so
/// a burst of garbage OS values does not shut out new real ones for long.
#[derive(Debug)]
struct OsTable {
    ids: FxHashMap<Box<str>, u16>,
    names: Vec<OsName>,
    cap: usize,
}

impl OsTable {
    fn new(cap: usize) -> OsTable {
        let mut t = OsTable { ids: FxHashMap::default(), names: Vec::new(), cap: cap.min(60_000) };
        t.reset();
        t
    }

    fn reset(&mut self) {
        self.ids.clear();
        self.names.clear();
        for (id, name) in [(OS_UNKNOWN_ID, OS_UNKNOWN), (OS_OTHER_ID, OS_OTHER)] {
            self.ids.insert(name.into(), id);
            self.names.push(OsName::new(name));
        }
    }

    /// The id of a normalised name; `None` when it had to fold into `other`.
    #[inline]
    fn id(&mut self, name: &str) -> Option<u16> {
        if let Some(&id) = self.ids.get(name) {
            return Some(id);
        }
        if self.names.len() >= self.cap + 2 {
            return None;
        }
        let id = self.names.len() as u16;
        self.ids.insert(name.into(), id);
        self.names.push(OsName::new(name));
        Some(id)
    }
}

/// An event whose row is being prefetched, to be added on the next event.
#[derive(Debug, Clone, Copy)]
struct Deferred {
    key: Key,
    hash: u64,
    counters: Counters,
    /// Its OS was folded into `other` (the OS cap).
    os_folded: bool,
}

/// Accumulates events into per-minute rollup rows between two flushes.
#[derive(Debug)]
pub struct Aggregator {
    config: AggregateConfig,
    rows: KeyTable,
    /// The last event, added to `rows` when the next one arrives (or before
    /// anything reads `rows`), so that its slot's cache line is loaded while
    /// the ingest thread decodes the next message.
    deferred: Option<Deferred>,
    os: OsTable,
    events: u64,
    raw: Vec<RawRow>,
    /// Counts since the last [`Aggregator::take_stats`].
    stats: AggregateStats,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new(config: AggregateConfig) -> Aggregator {
        let os = OsTable::new(config.max_os_values);
        Aggregator {
            config,
            rows: KeyTable::default(),
            deferred: None,
            os,
            events: 0,
            raw: Vec::new(),
            stats: AggregateStats::default(),
        }
    }

    /// Counts `ev` into its minute bucket, unless its event time is outside
    /// the accepted window around `now_ms`.
    #[inline]
    pub fn record(&mut self, ev: &Event<'_>, now_ms: i64) -> Outcome {
        let outcome = self.admit(ev.ts_ms, now_ms);
        if outcome == Outcome::Accepted {
            self.record_admitted(ev);
        }
        outcome
    }

    /// Whether an event time is inside the accepted window around `now_ms`;
    /// counts the rejections.
    #[inline]
    pub fn admit(&mut self, ts_ms: i64, now_ms: i64) -> Outcome {
        if ts_ms < now_ms.saturating_sub(self.config.max_lateness_ms) || ts_ms < 0 {
            self.stats.late += 1;
            Outcome::Late
        } else if ts_ms > now_ms.saturating_add(self.config.max_future_skew_ms) {
            self.stats.future += 1;
            Outcome::Future
        } else {
            Outcome::Accepted
        }
    }

    /// Keeps `ev` as a raw row (it passed [`Aggregator::admit`]), unless the
    /// raw buffer is full, in which case it is dropped and counted.
    pub fn push_raw(&mut self, ev: &Event<'_>, received_ms: i64) {
        if self.raw.len() >= self.config.max_raw_rows {
            self.stats.raw_dropped += 1;
            return;
        }
        self.stats.raw += 1;
        self.raw.push(RawRow::from_event(ev, received_ms));
    }

    /// Counts an event that passed [`Aggregator::admit`] into its bucket.
    #[inline]
    pub fn record_admitted(&mut self, ev: &Event<'_>) {
        let minute = u32::try_from(ev.ts_ms / 60_000).unwrap_or(u32::MAX);
        let country = country_code(normalise_country(ev.country));
        let mut buf = [0u8; OS_MAX_LEN];
        let mut folded = false;
        let os = match normalise_os(ev.os, &mut buf) {
            None => OS_UNKNOWN_ID,
            Some(name) => self.os.id(name).unwrap_or_else(|| {
                folded = true;
                OS_OTHER_ID
            }),
        };
        let key = Key::new(minute, ev.event_type, country, os, ev.campaign, ev.advertiser);
        let counters = Counters {
            events: 1,
            attributed: u64::from(ev.attributed == Some(true)),
            price: ev.price.unwrap_or(0),
            revenue: ev.revenue.unwrap_or(0),
        };
        let hash = KeyTable::hash(key.0);
        self.rows.prefetch(hash);
        let this = Deferred { key, hash, counters, os_folded: folded };
        if let Some(previous) = self.deferred.replace(this) {
            self.add(previous);
        }
        self.events += 1;
        self.stats.accepted[ev.event_type.index()] += 1;
    }

    /// The key a deferred event is added under: its own, or its folded key
    /// when the table is at the key cap and does not hold it yet (checking
    /// the length first keeps the common path to one lookup).
    #[inline]
    fn row_of(&self, d: &Deferred) -> Option<(Key, u64)> {
        if self.rows.len() >= self.config.max_live_keys && !self.rows.contains(d.key.0, d.hash) {
            let folded = d.key.folded();
            Some((folded, KeyTable::hash(folded.0)))
        } else {
            None
        }
    }

    #[inline]
    fn add(&mut self, d: Deferred) {
        let (key, hash, key_folded) = match self.row_of(&d) {
            Some((key, hash)) => (key, hash, true),
            None => (d.key, d.hash, false),
        };
        self.rows.add(key.0, hash, &d.counters);
        self.stats.folded += u64::from(d.os_folded || key_folded);
    }

    /// Adds the deferred event, if any.
    fn settle(&mut self) {
        if let Some(d) = self.deferred.take() {
            self.add(d);
        }
    }

    /// Distinct keys held now.
    pub fn live_keys(&self) -> usize {
        let adds_a_row = |d: &Deferred| match self.row_of(d) {
            Some((folded, hash)) => !self.rows.contains(folded.0, hash),
            None => !self.rows.contains(d.key.0, d.hash),
        };
        self.rows.len() + usize::from(self.deferred.as_ref().is_some_and(adds_a_row))
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.deferred.is_none() && self.raw.is_empty()
    }

    /// Events held now.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Returns and resets the counts since the last call.
    pub fn take_stats(&mut self) -> AggregateStats {
        self.settle();
        std::mem::take(&mut self.stats)
    }

    /// Hands over everything recorded since the last drain, sorted by key,
    /// and starts afresh (keeping the table's capacity, so steady state does
    /// not reallocate).
    ///
    /// Rows are sorted on a `u128` that packs the key in [`RowKey`]'s order
    /// (OS ids replaced by their rank in name order), which costs a few
    /// nanoseconds per comparison where comparing resolved keys would cost
    /// tens; keys are resolved once, in order.
    pub fn drain(&mut self) -> Delta {
        self.settle();
        let names = &self.os.names;
        let mut by_name: Vec<u16> = (0..names.len() as u16).collect();
        by_name.sort_unstable_by(|&a, &b| names[usize::from(a)].as_str().cmp(names[usize::from(b)].as_str()));
        let mut rank = vec![0u16; names.len()];
        for (r, &id) in by_name.iter().enumerate() {
            rank[usize::from(id)] = r as u16;
        }
        let mut sorted: Vec<(u128, Counters)> = Vec::with_capacity(self.rows.len());
        self.rows.drain(|key, counters| sorted.push((sort_key(Key(key), &rank), counters)));
        sorted.sort_unstable_by_key(|r| r.0);
        // Distinct packed keys resolve to distinct rows (a folded key's ids
        // are -1, never a real id); adding up keeps that an invariant of the
        // data rather than of the packing.
        let rows = add_up_adjacent(
            sorted
                .into_iter()
                .map(|(k, counters)| (row_key(k, |r| names[usize::from(by_name[usize::from(r)])]), counters)),
        );
        let delta = Delta { rows, events: self.events, raw: std::mem::take(&mut self.raw) };
        self.events = 0;
        self.os.reset();
        delta
    }
}

/// A packed key rearranged to sort in [`RowKey`]'s order, most significant
/// first: `hour:27 | type:3 | country:10 | os rank:16 | not folded:1 |
/// campaign:32 | advertiser:32 | minute of the hour:6` (127 bits). A folded
/// key's ids are -1, below every real id: its `not folded` bit is 0.
#[inline]
fn sort_key(key: Key, os_rank: &[u16]) -> u128 {
    let (minute, et, country, os, folded, campaign, advertiser) = key.unpack();
    let (hour, minute_of_hour) = (minute / 60, minute % 60);
    let (not_folded, campaign, advertiser) = if folded { (0, 0, 0) } else { (1, campaign, advertiser) };
    (u128::from(hour) << 100)
        | (u128::from(et) << 97)
        | (u128::from(country) << 87)
        | (u128::from(os_rank[usize::from(os)]) << 71)
        | (not_folded << 70)
        | (u128::from(campaign) << 38)
        | (u128::from(advertiser) << 6)
        | u128::from(minute_of_hour)
}

/// The row key of a [`sort_key`]; `os_name` maps an OS rank to its name.
#[inline]
fn row_key(k: u128, os_name: impl Fn(u16) -> OsName) -> RowKey {
    let bits = |shift: u32, width: u32| ((k >> shift) & ((1u128 << width) - 1)) as u64;
    let folded = bits(70, 1) == 0;
    let id = |v: u64| if folded { -1 } else { v as i64 };
    RowKey {
        minute: bits(100, 27) as i64 * 60 + bits(0, 6) as i64,
        event_type: EventType::ALL[bits(97, 3) as usize],
        country: country_of(bits(87, 10) as u16),
        os: os_name(bits(71, 16) as u16),
        campaign: id(bits(38, 32)),
        advertiser: id(bits(6, 32)),
    }
}

#[cfg(test)]
pub(super) fn key_round_trip(minute: u32, et: EventType, country: [u8; 2], os: u16, c: u32, a: u32) -> bool {
    let k = Key::new(minute, et, country_code(country), os, c, a);
    let (m2, et2, c2, os2, f2, ca2, ad2) = k.unpack();
    let f = k.folded().unpack();
    m2 == minute
        && et2 == et as u8
        && country_of(c2) == country
        && os2 == os
        && !f2
        && ca2 == c
        && ad2 == a
        && f == (minute, et as u8, country_code(country), OS_OTHER_ID, true, 0, 0)
}
