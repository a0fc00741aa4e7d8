//! The hot-path aggregator: packed keys, interned OS names, a fast hasher.

use super::delta::{add_up_adjacent, merge_sorted, Counters, Delta, OsName, Row, RowKey};
use super::normalise::{normalise_country, normalise_os, OS_MAX_LEN, OS_OTHER, OS_UNKNOWN};
use super::price::{delay_bucket, price_bucket};
use super::raw::RawRow;
use super::table::KeyTable;
use super::tier::{Dimension, Dimensions};
use crate::decode::Event;
use crate::wire::fnv1a64;
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
/// Default `max-exchange-values`.
pub const DEFAULT_MAX_EXCHANGE_VALUES: usize = 1_000;
/// Largest `max-os-values` / `max-exchange-values`: interned ids are 12 bits
/// of the packed key, two of them taken by `unknown` and `other`.
pub const MAX_NAME_VALUES: usize = 4_000;
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
    /// Cap on distinct exchange strings between two flushes; more fold into `other`.
    pub max_exchange_values: usize,
    /// Cap on raw rows held; beyond it raw rows are dropped (and counted).
    pub max_raw_rows: usize,
    /// The dimensions of every price distribution table together (`None`
    /// when there is none): each event with a positive price is also
    /// counted under its price bucket and these dimensions.
    pub price_dims: Option<Dimensions>,
    /// The pairings of bids with their outcomes and of impressions with
    /// their clicks (`None` when there is no bid landscape or timing table).
    pub pairing: Option<PairingConfig>,
}

/// Settings of the pairings, in memory and bounded: each bid waits for its
/// transaction's win or loss (and an outcome for its bid), for the bid
/// landscapes and the timing tables; each impression waits for its clicks
/// (and a click for its impression), for the timing tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairingConfig {
    /// The dimensions of every bid landscape together (`None`: no landscape).
    pub landscape: Option<Dimensions>,
    /// The dimensions of every timing table together (`None`: no timing table).
    pub timing: Option<Dimensions>,
    /// How long a half waits for the other (by arrival, ms).
    pub window_ms: i64,
    /// Transactions waiting at most in each pairing; a new one beyond it is
    /// not kept (counted).
    pub max_pending: usize,
}

/// Why a bid or an outcome left the landscape's pairing without its
/// other half ([`AggregateStats::unpaired`]'s index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpaired {
    /// A bid whose win or loss did not arrive within the window.
    NoOutcome = 0,
    /// A win or loss whose bid did not arrive within the window.
    NoBid = 1,
    /// Not kept: `max_pending` transactions were waiting.
    Full = 2,
    /// Waiting when its partition was handed to another fleet member (or
    /// taken by a fence): the other half, if it comes, goes to the new owner.
    Handover = 3,
}

impl Unpaired {
    /// Its label.
    pub fn as_str(self) -> &'static str {
        match self {
            Unpaired::NoOutcome => "no_outcome",
            Unpaired::NoBid => "no_bid",
            Unpaired::Full => "full",
            Unpaired::Handover => "handover",
        }
    }
}

/// Why a click left the impression-click pairing without its impression
/// ([`AggregateStats::clicks_unpaired`]'s index). An impression that no
/// click follows is not counted: most are never clicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickUnpaired {
    /// No impression of its transaction waited, and none came within the window.
    NoImpression = 0,
    /// Not kept: `max_pending` transactions were waiting.
    Full = 1,
    /// Waiting when its partition was handed to another fleet member (or
    /// taken by a fence).
    Handover = 2,
}

impl ClickUnpaired {
    /// Its label.
    pub fn as_str(self) -> &'static str {
        match self {
            ClickUnpaired::NoImpression => "no_impression",
            ClickUnpaired::Full => "full",
            ClickUnpaired::Handover => "handover",
        }
    }
}

/// Half of a transaction waiting for the other in the bid pairing (names
/// kept as names: the interned ids are renewed at every drain). What
/// usually waits, a bid, is held in the map; an outcome that came first,
/// rarer, in a box of its own.
#[derive(Debug, Clone)]
enum Waiting {
    /// A bid: its price bucket (if it had a price), exchange and event time.
    Bid { bucket: Option<u16>, exchange: OsName, ts_ms: i64, since: i64, partition: u16 },
    /// A win or loss: its row, but for its bid's bucket.
    Outcome { row: Box<EventRow>, since: i64, partition: u16 },
}

/// Half of a transaction waiting in the impression-click pairing.
#[derive(Debug, Clone)]
enum ClickHalf {
    /// An impression: its exchange and event time. It stays for the window
    /// (a transaction may be clicked more than once).
    Impression { exchange: OsName, ts_ms: i64, since: i64, partition: u16 },
    /// A click that came before its impression.
    Click { row: Box<EventRow>, since: i64, partition: u16 },
}

/// A paired event's row fields but the bucket (names kept as names).
#[derive(Debug, Clone, Copy)]
struct EventRow {
    minute: u32,
    /// Its event time's milliseconds within the minute.
    ms: u16,
    event_type: EventType,
    country: u16,
    os: OsName,
    exchange: OsName,
    campaign: u32,
    counters: Counters,
}

impl EventRow {
    fn ts_ms(&self) -> i64 {
        i64::from(self.minute) * 60_000 + i64::from(self.ms)
    }
}

/// A half waiting in a pairing.
trait Half {
    /// When it began waiting (the pairing's clock, ms).
    fn since(&self) -> i64;
    /// The partition of the topic it came on: it leaves when that
    /// partition is handed over, since its other half will go with it.
    fn partition(&self) -> u16;
}

impl Half for Waiting {
    fn since(&self) -> i64 {
        match self {
            Waiting::Bid { since, .. } | Waiting::Outcome { since, .. } => *since,
        }
    }

    fn partition(&self) -> u16 {
        match self {
            Waiting::Bid { partition, .. } | Waiting::Outcome { partition, .. } => *partition,
        }
    }
}

impl Half for ClickHalf {
    fn since(&self) -> i64 {
        match self {
            ClickHalf::Impression { since, .. } | ClickHalf::Click { since, .. } => *since,
        }
    }

    fn partition(&self) -> u16 {
        match self {
            ClickHalf::Impression { partition, .. } | ClickHalf::Click { partition, .. } => *partition,
        }
    }
}

/// The halves of one pairing, by the hash of their transaction's id, and
/// the order they began waiting in.
#[derive(Debug)]
struct Halves<H> {
    waiting: FxHashMap<u64, H>,
    /// (`since`, txn hash) in the order the halves began waiting, so that
    /// expiring them reads the oldest alone; an entry whose half has left
    /// meanwhile (paired, replaced) is skipped when its turn comes.
    arrivals: std::collections::VecDeque<(i64, u64)>,
}

impl<H> Default for Halves<H> {
    fn default() -> Self {
        Halves { waiting: FxHashMap::default(), arrivals: std::collections::VecDeque::new() }
    }
}

impl<H: Half> Halves<H> {
    /// Keeps `half` waiting, unless `max_pending` are: then returns false.
    fn wait(&mut self, txn: u64, half: H, max_pending: usize) -> bool {
        if self.waiting.len() >= max_pending {
            return false;
        }
        self.arrivals.push_back((half.since(), txn));
        self.waiting.insert(txn, half);
        if self.arrivals.len() > 2 * self.waiting.len() + 1024 {
            // mostly halves that left: keep the others' entries alone
            let waiting = &self.waiting;
            self.arrivals.retain(|(since, txn)| waiting.get(txn).is_some_and(|h| h.since() == *since));
        }
        true
    }

    /// Lets the halves that began waiting before `oldest` leave, each
    /// through `left`.
    fn expire(&mut self, oldest: i64, mut left: impl FnMut(H)) {
        while let Some(&(since, txn)) = self.arrivals.front() {
            if since >= oldest {
                break;
            }
            self.arrivals.pop_front();
            // (the half of this entry, not a later one of the same transaction)
            if self.waiting.get(&txn).is_some_and(|h| h.since() == since) {
                left(self.waiting.remove(&txn).expect("just found"));
            }
        }
    }

    /// Lets the halves of the partitions `gone` says leave, each through `left`.
    fn release(&mut self, gone: impl Fn(u32) -> bool, mut left: impl FnMut(&H)) {
        self.waiting.retain(|_, half| {
            let goes = gone(u32::from(half.partition()));
            if goes {
                left(half);
            }
            !goes
        });
        // (their entries in `arrivals` no longer match a waiting half: skipped there)
    }
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            max_lateness_ms: DEFAULT_MAX_LATENESS_MS,
            max_future_skew_ms: DEFAULT_MAX_FUTURE_SKEW_MS,
            max_live_keys: DEFAULT_MAX_LIVE_KEYS,
            max_os_values: DEFAULT_MAX_OS_VALUES,
            max_exchange_values: DEFAULT_MAX_EXCHANGE_VALUES,
            max_raw_rows: DEFAULT_MAX_RAW_ROWS,
            price_dims: None,
            pairing: None,
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
    /// Bids and outcomes paired for the bid landscapes.
    pub paired: u64,
    /// Bids and outcomes that left the pairing unpaired, per [`Unpaired`].
    pub unpaired: [u64; 4],
    /// Clicks paired with their impression for the timing tables.
    pub clicks_paired: u64,
    /// Clicks that left the impression-click pairing unpaired, per
    /// [`ClickUnpaired`].
    pub clicks_unpaired: [u64; 3],
    /// Impressions the impression-click pairing could not keep
    /// (`max_pending` transactions were waiting): their clicks, if any,
    /// leave counted in [`AggregateStats::clicks_unpaired`].
    pub impressions_unkept: u64,
}

/// A packed key: `minute:26 | type:3 | country:10 | os:12 | exchange:12 |
/// folded:1` in the high 64 bits, `campaign:32 | advertiser:32` in the low
/// ones. One `u128` hashes in two multiplies ([`KeyTable::hash`]) and
/// compares in two instructions. 26 bits of minutes since the epoch last
/// until 2097; events outside the accepted window never get here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key(u128);

const FOLDED: u128 = 1 << 64;
const MINUTE_MASK: u32 = (1 << 26) - 1;

impl Key {
    #[inline]
    fn new(
        minute: u32,
        event_type: EventType,
        country: u16,
        os: u16,
        exchange: u16,
        campaign: u32,
        advertiser: u32,
    ) -> Key {
        let hi = (u64::from(minute & MINUTE_MASK) << 38)
            | ((event_type as u64) << 35)
            | (u64::from(country) << 25)
            | (u64::from(os) << 13)
            | (u64::from(exchange) << 1);
        Key((u128::from(hi) << 64) | (u128::from(campaign) << 32) | u128::from(advertiser))
    }

    /// Same bucket, type and country; OS and exchange `other`; ids `-1`.
    #[inline]
    fn folded(self) -> Key {
        let keep = self.0 & !((0xff_ffff_u128 << 65) | 0xffff_ffff_ffff_ffff_u128);
        Key(keep | (u128::from(NAME_OTHER_ID) << 77) | (u128::from(NAME_OTHER_ID) << 65) | FOLDED)
    }

    fn unpack(self) -> Unpacked {
        let hi = (self.0 >> 64) as u64;
        let lo = self.0 as u64;
        Unpacked {
            minute: (hi >> 38) as u32,
            event_type: ((hi >> 35) & 0x7) as u8,
            country: ((hi >> 25) & 0x3ff) as u16,
            os: ((hi >> 13) & 0xfff) as u16,
            exchange: ((hi >> 1) & 0xfff) as u16,
            folded: hi & 1 == 1,
            campaign: (lo >> 32) as u32,
            advertiser: lo as u32,
        }
    }
}

/// The fields of a [`Key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unpacked {
    minute: u32,
    event_type: u8,
    country: u16,
    os: u16,
    exchange: u16,
    folded: bool,
    campaign: u32,
    advertiser: u32,
}

const NAME_UNKNOWN_ID: u16 = 0;
const NAME_OTHER_ID: u16 = 1;

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

/// OS (or exchange) strings interned to small ids for the packed key.
/// Bounded: beyond `cap` distinct values everything new is `other`. Reset at
/// every drain, so a burst of garbage values does not shut out new real ones
/// for long.
#[derive(Debug)]
struct NameTable {
    ids: FxHashMap<Box<str>, u16>,
    names: Vec<OsName>,
    cap: usize,
}

impl NameTable {
    fn new(cap: usize) -> NameTable {
        let mut t = NameTable { ids: FxHashMap::default(), names: Vec::new(), cap: cap.min(MAX_NAME_VALUES) };
        t.reset();
        t
    }

    fn reset(&mut self) {
        self.ids.clear();
        self.names.clear();
        for (id, name) in [(NAME_UNKNOWN_ID, OS_UNKNOWN), (NAME_OTHER_ID, OS_OTHER)] {
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
    /// Its OS or exchange was folded into `other` (their caps).
    name_folded: bool,
}

/// Accumulates events into per-minute rollup rows between two flushes.
#[derive(Debug)]
pub struct Aggregator {
    config: AggregateConfig,
    rows: KeyTable,
    /// The price distributions' rows: keys whose advertiser field holds
    /// the price bucket (see [`Aggregator::record_price`]).
    prices: KeyTable,
    /// The last priced event, added to `prices` when the next one arrives
    /// (as `deferred` is to `rows`).
    deferred_price: Option<(Key, u64, Counters)>,
    /// The bid landscapes' rows: keys whose advertiser field holds the
    /// bid's price bucket.
    landscape: KeyTable,
    /// The timing tables' rows: keys whose advertiser field holds the
    /// delay's bucket.
    timing: KeyTable,
    /// Transactions with a bid or an outcome waiting for the other.
    waiting: Halves<Waiting>,
    /// Transactions with an impression or a click waiting for the other.
    clicks: Halves<ClickHalf>,
    /// The pairings' clock (ms of a monotonic clock, moved by
    /// [`Aggregator::expire_waiting`] alone): when each half began waiting.
    now_ms: i64,
    /// The last event, added to `rows` when the next one arrives (or before
    /// anything reads `rows`), so that its slot's cache line is loaded while
    /// the ingest thread decodes the next message.
    deferred: Option<Deferred>,
    os: NameTable,
    exchange: NameTable,
    events: u64,
    raw: Vec<RawRow>,
    /// Counts since the last [`Aggregator::take_stats`].
    stats: AggregateStats,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new(config: AggregateConfig) -> Aggregator {
        let os = NameTable::new(config.max_os_values);
        let exchange = NameTable::new(config.max_exchange_values);
        Aggregator {
            config,
            rows: KeyTable::default(),
            prices: KeyTable::default(),
            deferred_price: None,
            landscape: KeyTable::default(),
            timing: KeyTable::default(),
            waiting: Halves::default(),
            clicks: Halves::default(),
            now_ms: 0,
            deferred: None,
            os,
            exchange,
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
            None => NAME_UNKNOWN_ID,
            Some(name) => self.os.id(name).unwrap_or_else(|| {
                folded = true;
                NAME_OTHER_ID
            }),
        };
        let exchange = match normalise_os(ev.exchange, &mut buf) {
            None => NAME_UNKNOWN_ID,
            Some(name) => self.exchange.id(name).unwrap_or_else(|| {
                folded = true;
                NAME_OTHER_ID
            }),
        };
        let key = Key::new(minute, ev.event_type, country, os, exchange, ev.campaign, ev.advertiser);
        let counters = Counters {
            events: 1,
            attributed: u64::from(ev.attributed == Some(true)),
            price: ev.price.unwrap_or(0),
            revenue: ev.revenue.unwrap_or(0),
        };
        if let Some(dims) = self.config.price_dims {
            if let Some(bucket) = ev.price.and_then(price_bucket) {
                let has = |d: Dimension| dims.has(d);
                let (country, os) =
                    (if has(Dimension::Country) { country } else { 0 }, if has(Dimension::Os) { os } else { 0 });
                let exchange = if has(Dimension::Exchange) { exchange } else { NAME_UNKNOWN_ID };
                let campaign = if has(Dimension::Campaign) { ev.campaign } else { 0 };
                let key = Key::new(minute, ev.event_type, country, os, exchange, campaign, u32::from(bucket));
                self.record_price(key, &counters);
            }
        }
        if let Some(p) = self.config.pairing {
            match ev.event_type {
                EventType::Bid | EventType::Win | EventType::Loss => self.pair(ev, minute, country, &p, &counters),
                EventType::Impression | EventType::Click if p.timing.is_some() => {
                    self.pair_click(ev, minute, country, &p, &counters)
                }
                _ => {}
            }
        }
        let hash = KeyTable::hash(key.0);
        self.rows.prefetch(hash);
        let this = Deferred { key, hash, counters, name_folded: folded };
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
        self.stats.folded += u64::from(d.name_folded || key_folded);
    }

    /// Counts a priced event under `key` (its price bucket in the advertiser
    /// field); at the key cap, a new key folds like a rollup key does, but
    /// keeps its price bucket.
    #[inline]
    fn record_price(&mut self, key: Key, counters: &Counters) {
        let hash = KeyTable::hash(key.0);
        self.prices.prefetch(hash);
        if let Some((key, hash, counters)) = self.deferred_price.replace((key, hash, *counters)) {
            self.add_price(key, hash, &counters);
        }
    }

    #[inline]
    fn add_price(&mut self, key: Key, hash: u64, counters: &Counters) {
        add_keeping_bucket(&mut self.prices, self.config.max_live_keys, key, hash, counters);
    }

    /// An event's row for a pairing (names kept as names).
    fn event_row(ev: &Event<'_>, minute: u32, country: u16, counters: &Counters) -> EventRow {
        let mut buf = [0u8; OS_MAX_LEN];
        let mut name = |v: Option<&str>| normalise_os(v, &mut buf).map_or(OsName::new(OS_UNKNOWN), OsName::new);
        EventRow {
            minute,
            ms: ev.ts_ms.rem_euclid(60_000) as u16,
            event_type: ev.event_type,
            country,
            os: name(ev.os),
            exchange: name(ev.exchange),
            campaign: ev.campaign,
            counters: *counters,
        }
    }

    /// Pairs a bid with its win or loss, in either order: a bid adds a row
    /// under its own price's bucket and waits; an outcome adds a row under
    /// its bid's bucket (with the bid's exchange when it has none), and a
    /// row under its delay after the bid, or waits for its bid. A bid
    /// without a price has no landscape row, nor have its outcomes; it
    /// waits all the same when a timing table is declared.
    fn pair(&mut self, ev: &Event<'_>, minute: u32, country: u16, p: &PairingConfig, counters: &Counters) {
        let row = Self::event_row(ev, minute, country, counters);
        let txn = fnv1a64(ev.txn);
        let (since, partition) = (self.now_ms, arrival_partition(ev));
        if ev.event_type == EventType::Bid {
            let bucket = ev.price.and_then(price_bucket);
            if bucket.is_none() && p.timing.is_none() {
                return; // nothing to count it in
            }
            if let (Some(dims), Some(bucket)) = (p.landscape, bucket) {
                self.add_paired(dims, &row, bucket, Paired::Landscape);
            }
            match self.waiting.waiting.remove(&txn) {
                Some(Waiting::Outcome { row: outcome, .. }) => {
                    let mut outcome = *outcome;
                    if outcome.exchange.as_str() == OS_UNKNOWN {
                        outcome.exchange = row.exchange;
                    }
                    self.add_pair(p, &outcome, bucket, ev.ts_ms);
                }
                earlier => {
                    if earlier.is_some() {
                        self.stats.unpaired[Unpaired::NoOutcome as usize] += 1; // a bid again: the first one's outcome never came
                    }
                    let half = Waiting::Bid { bucket, exchange: row.exchange, ts_ms: ev.ts_ms, since, partition };
                    if !self.waiting.wait(txn, half, p.max_pending) {
                        self.stats.unpaired[Unpaired::Full as usize] += 1;
                    }
                }
            }
        } else {
            match self.waiting.waiting.remove(&txn) {
                Some(Waiting::Bid { bucket, exchange: bid_exchange, ts_ms, .. }) => {
                    let exchange = if row.exchange.as_str() == OS_UNKNOWN { bid_exchange } else { row.exchange };
                    self.add_pair(p, &EventRow { exchange, ..row }, bucket, ts_ms);
                }
                earlier => {
                    if earlier.is_some() {
                        self.stats.unpaired[Unpaired::NoBid as usize] += 1; // an outcome again
                    }
                    let half = Waiting::Outcome { row: Box::new(row), since, partition };
                    if !self.waiting.wait(txn, half, p.max_pending) {
                        self.stats.unpaired[Unpaired::Full as usize] += 1;
                    }
                }
            }
        }
    }

    /// Counts an outcome paired with its bid (of price bucket `bucket`, if
    /// it had a price, and event time `bid_ts_ms`) in the landscapes and
    /// the timing tables.
    fn add_pair(&mut self, p: &PairingConfig, outcome: &EventRow, bucket: Option<u16>, bid_ts_ms: i64) {
        if let (Some(dims), Some(bucket)) = (p.landscape, bucket) {
            self.add_paired(dims, outcome, bucket, Paired::Landscape);
        }
        if let Some(dims) = p.timing {
            self.add_paired(dims, outcome, delay_bucket(outcome.ts_ms() - bid_ts_ms), Paired::Timing);
        }
        self.stats.paired += 1;
    }

    /// Pairs an impression with its clicks, in either order, for the timing
    /// tables: a click adds a row under its delay after the impression
    /// (with the impression's exchange when it has none), or waits for its
    /// impression; an impression waits for the window, for every click.
    fn pair_click(&mut self, ev: &Event<'_>, minute: u32, country: u16, p: &PairingConfig, counters: &Counters) {
        let Some(dims) = p.timing else { return };
        let row = Self::event_row(ev, minute, country, counters);
        let txn = fnv1a64(ev.txn);
        let (since, partition) = (self.now_ms, arrival_partition(ev));
        let click_after = |click: &EventRow, exchange: OsName, ts_ms: i64| {
            let exchange = if click.exchange.as_str() == OS_UNKNOWN { exchange } else { click.exchange };
            (EventRow { exchange, ..*click }, delay_bucket(click.ts_ms() - ts_ms))
        };
        if ev.event_type == EventType::Click {
            match self.clicks.waiting.get(&txn) {
                Some(&ClickHalf::Impression { exchange, ts_ms, .. }) => {
                    let (click, bucket) = click_after(&row, exchange, ts_ms);
                    self.add_paired(dims, &click, bucket, Paired::Timing);
                    self.stats.clicks_paired += 1;
                }
                Some(ClickHalf::Click { .. }) => {
                    // a second click before the impression: the first waits
                    self.stats.clicks_unpaired[ClickUnpaired::NoImpression as usize] += 1;
                }
                None => {
                    if !self.clicks.wait(txn, ClickHalf::Click { row: Box::new(row), since, partition }, p.max_pending)
                    {
                        self.stats.clicks_unpaired[ClickUnpaired::Full as usize] += 1;
                    }
                }
            }
        } else {
            let impression = ClickHalf::Impression { exchange: row.exchange, ts_ms: ev.ts_ms, since, partition };
            match self.clicks.waiting.get(&txn) {
                Some(ClickHalf::Impression { .. }) => {} // an impression again: the first one stays
                Some(ClickHalf::Click { .. }) => {
                    let Some(ClickHalf::Click { row: click, .. }) = self.clicks.waiting.remove(&txn) else {
                        unreachable!("just found")
                    };
                    let (click, bucket) = click_after(&click, row.exchange, ev.ts_ms);
                    self.add_paired(dims, &click, bucket, Paired::Timing);
                    self.stats.clicks_paired += 1;
                    self.clicks.wait(txn, impression, usize::MAX); // (it took the click's place)
                }
                None => {
                    if !self.clicks.wait(txn, impression, p.max_pending) {
                        self.stats.impressions_unkept += 1; // its clicks, if any, leave counted as clicks
                    }
                }
            }
        }
    }

    /// Counts a landscape or timing row under `bucket` (the bid's price
    /// bucket, or the delay's).
    fn add_paired(&mut self, dims: Dimensions, row: &EventRow, bucket: u16, table: Paired) {
        let EventRow { minute, event_type, country, os, exchange, campaign, ref counters, .. } = *row;
        let has = |d: Dimension| dims.has(d);
        let id = |table: &mut NameTable, name: OsName| table.id(name.as_str()).unwrap_or(NAME_OTHER_ID);
        let os = if has(Dimension::Os) { id(&mut self.os, os) } else { NAME_UNKNOWN_ID };
        let exchange = if has(Dimension::Exchange) { id(&mut self.exchange, exchange) } else { NAME_UNKNOWN_ID };
        let country = if has(Dimension::Country) { country } else { 0 };
        let campaign = if has(Dimension::Campaign) { campaign } else { 0 };
        let key = Key::new(minute, event_type, country, os, exchange, campaign, u32::from(bucket));
        let table = match table {
            Paired::Landscape => &mut self.landscape,
            Paired::Timing => &mut self.timing,
        };
        add_keeping_bucket(table, self.config.max_live_keys, key, KeyTable::hash(key.0), counters);
    }

    /// Moves the pairings' clock to `now_ms`, ms of a monotonic clock (the
    /// ingest loop calls it every few milliseconds: a half's wait is that
    /// precise, and a step of the wall clock changes nothing), and lets the
    /// halves that waited longer than the window leave, counted.
    pub fn expire_waiting(&mut self, now_ms: i64) {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(p) = self.config.pairing else { return };
        let oldest = self.now_ms.saturating_sub(p.window_ms);
        let (unpaired, clicks_unpaired) = (&mut self.stats.unpaired, &mut self.stats.clicks_unpaired);
        self.waiting.expire(oldest, |half| {
            let reason = if matches!(half, Waiting::Bid { .. }) { Unpaired::NoOutcome } else { Unpaired::NoBid };
            unpaired[reason as usize] += 1;
        });
        self.clicks.expire(oldest, |half| {
            if matches!(half, ClickHalf::Click { .. }) {
                clicks_unpaired[ClickUnpaired::NoImpression as usize] += 1;
            }
        });
    }

    /// Drops the halves waiting that came on the topics of the partitions
    /// `gone` says are no longer this thread's (handed over), counting them
    /// as [`Unpaired::Handover`] (a click as [`ClickUnpaired::Handover`];
    /// an impression is not counted); returns how many bids and outcomes
    /// left.
    pub fn release_waiting(&mut self, gone: impl Fn(u32) -> bool) -> u64 {
        let mut released = 0;
        self.waiting.release(&gone, |_| released += 1);
        self.stats.unpaired[Unpaired::Handover as usize] += released;
        let clicks = &mut self.stats.clicks_unpaired[ClickUnpaired::Handover as usize];
        self.clicks.release(&gone, |half| *clicks += u64::from(matches!(half, ClickHalf::Click { .. })));
        released
    }

    /// Bids and outcomes waiting for their other half.
    pub fn waiting(&self) -> usize {
        self.waiting.waiting.len()
    }

    /// Impressions and clicks waiting in the impression-click pairing.
    pub fn clicks_waiting(&self) -> usize {
        self.clicks.waiting.len()
    }

    /// Clicks waiting for their impression.
    pub fn clicks_unpaired_now(&self) -> usize {
        self.clicks.waiting.values().filter(|h| matches!(h, ClickHalf::Click { .. })).count()
    }

    /// Adds the deferred event, if any.
    fn settle(&mut self) {
        if let Some(d) = self.deferred.take() {
            self.add(d);
        }
        if let Some((key, hash, counters)) = self.deferred_price.take() {
            self.add_price(key, hash, &counters);
        }
    }

    /// Distinct keys held now.
    pub fn live_keys(&self) -> usize {
        let adds_a_row = |d: &Deferred| match self.row_of(d) {
            Some((folded, hash)) => !self.rows.contains(folded.0, hash),
            None => !self.rows.contains(d.key.0, d.hash),
        };
        self.rows.len()
            + self.prices.len()
            + usize::from(self.deferred.as_ref().is_some_and(adds_a_row))
            + usize::from(self.deferred_price.is_some_and(|(k, h, _)| !self.prices.contains(k.0, h)))
            + self.landscape.len()
            + self.timing.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
            && self.prices.is_empty()
            && self.deferred.is_none()
            && self.deferred_price.is_none()
            && self.landscape.is_empty()
            && self.timing.is_empty()
            && self.raw.is_empty()
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
        let (os, exchange) = (Ranks::of(&self.os.names), Ranks::of(&self.exchange.names));
        let mut sorted: Vec<(u128, Counters)> = Vec::with_capacity(self.rows.len());
        self.rows.drain(|key, counters| sorted.push((sort_key(Key(key), &os.rank, &exchange.rank, false), counters)));
        sorted.sort_unstable_by_key(|r| r.0);
        // Distinct packed keys resolve to distinct rows (a folded key's ids
        // are -1, never a real id); adding up keeps that an invariant of the
        // data rather than of the packing.
        let mut rows = add_up_adjacent(sorted.drain(..).map(|(k, counters)| {
            (row_key(k, |r| self.os.names[os.id(r)], |r| self.exchange.names[exchange.id(r)]), counters)
        }));
        let names = (&os, &self.os.names[..], &exchange, &self.exchange.names[..]);
        if !self.prices.is_empty() {
            let prices =
                drain_bucketed(&mut self.prices, &mut sorted, names, |key, b| RowKey { price_bucket: b, ..key });
            rows = merge_sorted(rows, prices, &mut |_| true);
        }
        if !self.landscape.is_empty() {
            let landscape =
                drain_bucketed(&mut self.landscape, &mut sorted, names, |key, b| RowKey { bid_bucket: b, ..key });
            rows = merge_sorted(rows, landscape, &mut |_| true);
        }
        if !self.timing.is_empty() {
            let timing =
                drain_bucketed(&mut self.timing, &mut sorted, names, |key, b| RowKey { delay_bucket: b, ..key });
            rows = merge_sorted(rows, timing, &mut |_| true);
        }
        let delta = Delta { rows, events: self.events, raw: std::mem::take(&mut self.raw), ..Delta::default() };
        self.events = 0;
        self.os.reset();
        self.exchange.reset();
        delta
    }
}

/// The partition of the topic `ev` came on, as a waiting half keeps it
/// (partitions are below 10 000).
#[inline]
fn arrival_partition(ev: &Event<'_>) -> u16 {
    u16::try_from(ev.partition).unwrap_or(u16::MAX)
}

/// The table a paired row goes to.
#[derive(Debug, Clone, Copy)]
enum Paired {
    Landscape,
    Timing,
}

/// Adds `counters` under a price, landscape or timing `key` (its bucket in the
/// advertiser field) to `table`; at the key cap `cap`, a new key folds like a
/// rollup key does, but keeps its bucket.
#[inline]
fn add_keeping_bucket(table: &mut KeyTable, cap: usize, key: Key, hash: u64, counters: &Counters) {
    let (key, hash) = if table.len() >= cap && !table.contains(key.0, hash) {
        let folded = Key(key.folded().0 | (key.0 & 0xffff_ffff));
        (folded, KeyTable::hash(folded.0))
    } else {
        (key, hash)
    };
    table.add(key.0, hash, counters);
}

/// The rows of a price or landscape `table`, sorted like the rollup rows
/// (the bucket in the advertiser's place is where `RowKey`'s order puts it
/// for such a row); `with_bucket` puts the bucket in its own field. `sorted`
/// is scratch space; `names` are the drain's OS and exchange ranks and names.
fn drain_bucketed(
    table: &mut KeyTable,
    sorted: &mut Vec<(u128, Counters)>,
    (os, os_names, exchange, exchange_names): (&Ranks, &[OsName], &Ranks, &[OsName]),
    with_bucket: impl Fn(RowKey, u16) -> RowKey,
) -> Vec<Row> {
    table.drain(|key, counters| sorted.push((sort_key(Key(key), &os.rank, &exchange.rank, true), counters)));
    sorted.sort_unstable_by_key(|r| r.0);
    add_up_adjacent(sorted.drain(..).map(|(k, counters)| {
        let key = row_key(k, |r| os_names[os.id(r)], |r| exchange_names[exchange.id(r)]);
        let bucket = ((k >> 23) & 0xffff_ffff) as u16;
        (with_bucket(RowKey { advertiser: 0, ..key }, bucket), counters)
    }))
}

/// Interned ids by name order, and back.
struct Ranks {
    /// Ids in name order.
    by_name: Vec<u16>,
    /// Each id's rank in name order.
    rank: Vec<u16>,
}

impl Ranks {
    fn of(names: &[OsName]) -> Ranks {
        let mut by_name: Vec<u16> = (0..names.len() as u16).collect();
        by_name.sort_unstable_by(|&a, &b| names[usize::from(a)].as_str().cmp(names[usize::from(b)].as_str()));
        let mut rank = vec![0u16; names.len()];
        for (r, &id) in by_name.iter().enumerate() {
            rank[usize::from(id)] = r as u16;
        }
        Ranks { by_name, rank }
    }

    /// The id of rank `r`.
    #[inline]
    fn id(&self, r: u16) -> usize {
        usize::from(self.by_name[usize::from(r)])
    }
}

/// A packed key rearranged to sort in [`RowKey`]'s order, most significant
/// first: `day:15 | type:3 | country:10 | os rank:12 | not folded:1 |
/// campaign:32 | advertiser (a price key's: its price bucket):32 | minute of
/// the day:11 | exchange rank:12`
/// (128 bits; 15 bits of days since the epoch last until 2059). A folded
/// key's ids are -1, below every real id: its `not folded` bit is 0.
#[inline]
fn sort_key(key: Key, os_rank: &[u16], exchange_rank: &[u16], price: bool) -> u128 {
    let k = key.unpack();
    let (day, minute_of_day) = (k.minute / 1440, k.minute % 1440);
    let (not_folded, campaign, advertiser) = if k.folded { (0, 0, 0) } else { (1, k.campaign, k.advertiser) };
    // A price key's advertiser field is its price bucket, folded or not.
    let advertiser = if price { k.advertiser } else { advertiser };
    (u128::from(day) << 113)
        | (u128::from(k.event_type) << 110)
        | (u128::from(k.country) << 100)
        | (u128::from(os_rank[usize::from(k.os)]) << 88)
        | (not_folded << 87)
        | (u128::from(campaign) << 55)
        | (u128::from(advertiser) << 23)
        | (u128::from(minute_of_day) << 12)
        | u128::from(exchange_rank[usize::from(k.exchange)])
}

/// The row key of a [`sort_key`]; `os_name` and `exchange_name` map ranks to names.
#[inline]
fn row_key(k: u128, os_name: impl Fn(u16) -> OsName, exchange_name: impl Fn(u16) -> OsName) -> RowKey {
    let bits = |shift: u32, width: u32| ((k >> shift) & ((1u128 << width) - 1)) as u64;
    let folded = bits(87, 1) == 0;
    let id = |v: u64| if folded { -1 } else { v as i64 };
    RowKey {
        minute: bits(113, 15) as i64 * 1440 + bits(12, 11) as i64,
        event_type: EventType::ALL[bits(110, 3) as usize],
        country: country_of(bits(100, 10) as u16),
        os: os_name(bits(88, 12) as u16),
        exchange: exchange_name(bits(0, 12) as u16),
        campaign: id(bits(55, 32)),
        advertiser: id(bits(23, 32)),
        price_bucket: 0,
        bid_bucket: 0,
        delay_bucket: 0,
    }
}

#[cfg(test)]
pub(super) fn key_round_trip(
    minute: u32,
    et: EventType,
    country: [u8; 2],
    os: u16,
    exchange: u16,
    c: u32,
    a: u32,
) -> bool {
    let k = Key::new(minute, et, country_code(country), os, exchange, c, a);
    let u = k.unpack();
    let f = k.folded().unpack();
    let expected = Unpacked {
        minute,
        event_type: et as u8,
        country: country_code(country),
        os,
        exchange,
        folded: false,
        campaign: c,
        advertiser: a,
    };
    u == expected
        && country_of(u.country) == country
        && f == Unpacked {
            os: NAME_OTHER_ID,
            exchange: NAME_OTHER_ID,
            folded: true,
            campaign: 0,
            advertiser: 0,
            ..expected
        }
}

#[cfg(test)]
mod waiting_size {
    /// What one waiting half costs in the map (its key, its value; the
    /// table's own overhead comes on top, and a box for an outcome or a
    /// click that came first): the figures the docs give.
    #[test]
    fn a_waiting_half_is_at_most_64_bytes_with_its_key_and_a_boxed_one_128_more() {
        let size = std::mem::size_of::<(u64, super::Waiting)>();
        assert!(size <= 64, "{size}");
        let size = std::mem::size_of::<(u64, super::ClickHalf)>();
        assert!(size <= 64, "{size}");
        let size = std::mem::size_of::<super::EventRow>();
        assert!(size <= 128, "{size}");
    }
}
