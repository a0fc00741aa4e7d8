//! What one flush writes: rows keyed by resolved dimensions.

use crate::seq::Mark;
use crate::wire::EventType;
use std::cmp::Ordering;
use std::fmt;

use super::normalise::{OS_MAX_LEN, OS_OTHER};
use super::raw::RawRow;

/// A normalised OS or exchange name stored inline (it is at most 32 bytes),
/// so that delta keys are `Copy` and merging deltas allocates nothing per row.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OsName {
    len: u8,
    bytes: [u8; OS_MAX_LEN],
}

impl OsName {
    /// The empty name: the value of a dimension a table does not have.
    pub const EMPTY: OsName = OsName { len: 0, bytes: [0; OS_MAX_LEN] };

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
    #[inline]
    pub fn as_str(&self) -> &str {
        // SAFETY: the bytes are a copy of a `str` ([`OsName::new`]; the
        // fields are private), so they are valid UTF-8. Keys are compared
        // and written per row at every flush: validating again each time
        // cost more than the rest of the comparison.
        unsafe { std::str::from_utf8_unchecked(self.as_bytes()) }
    }

    /// The name's bytes (their order is the names' `str` order).
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for OsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// One fine-grained row's key: a minute and every dimension any rollup
/// table uses. A rollup table's rows are these keys projected onto its own
/// dimensions and coarsened to its grain ([`super::Shape::project`]).
///
/// Keys are ordered by day, then the dimensions other than the exchange
/// (type, country, OS, campaign, advertiser, price bucket, bid's bucket), then the minute,
/// then the exchange: the order rows are kept in ([`Delta`]) and written in (every
/// instance locks rows in this one order). Dropping the exchange, or
/// coarsening the minute to its hour or day, keeps rows in order with equal
/// keys adjacent, so the tables of every dimension (`rollup_minute`,
/// `rollup_hour`, `rollup_day`) come out of one pass each, and a delta splits
/// into parts with disjoint rows in all three at any [`RowKey::same_group`]
/// boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowKey {
    /// Minutes since the Unix epoch (the bucket, at the table's grain: the
    /// first minute of its hour or day).
    pub minute: i64,
    /// Event type.
    pub event_type: EventType,
    /// Normalised country (`--` when unknown).
    pub country: [u8; 2],
    /// Normalised OS.
    pub os: OsName,
    /// Normalised exchange (same rules as the OS).
    pub exchange: OsName,
    /// Campaign id; 0 = none, -1 = folded.
    pub campaign: i64,
    /// Advertiser id; 0 = none, -1 = folded.
    pub advertiser: i64,
    /// 0 for a row of the rollups; otherwise a row of the price
    /// distributions, of the events whose price is in this bucket (see
    /// [`super::price`]): those events are counted in a rollup row as well,
    /// so such a row's events are not added to a delta's total.
    pub price_bucket: u16,
    /// 0 but for a row of the bid landscapes: the price bucket of the
    /// transaction's bid (of the bid itself, for a `bid` row), whose events
    /// are counted in a rollup row as well.
    pub bid_bucket: u16,
    /// 0 but for a row of the timing tables: the bucket of the delay (ms)
    /// from the transaction's bid to this win or loss, or from its
    /// impression to this click (the paired event is counted in a rollup
    /// row as well).
    pub delay_bucket: u16,
}

impl RowKey {
    /// The key that over-cap combinations of this bucket, type and country
    /// fold into: OS and exchange `other`, campaign and advertiser `-1`.
    pub fn folded(&self) -> RowKey {
        let other = OsName::new(OS_OTHER);
        // A price or landscape row keeps its bucket and drops its country
        // too: its folded rows are one per minute, type and bucket.
        let country = if self.kind() == 0 { self.country } else { *b"--" };
        RowKey { os: other, exchange: other, campaign: -1, advertiser: -1, country, ..*self }
    }

    /// The country as text.
    pub fn country_str(&self) -> &str {
        std::str::from_utf8(&self.country).unwrap_or("--")
    }

    /// Which tables take the row: 0 the rollups, 1 the price distributions
    /// (see [`super::Dimensions::kind`]), 2 the bid landscapes, 3 the
    /// timing tables.
    #[inline]
    pub fn kind(&self) -> u8 {
        if self.price_bucket != 0 {
            1
        } else if self.bid_bucket != 0 {
            2
        } else if self.delay_bucket != 0 {
            3
        } else {
            0
        }
    }

    /// The day bucket: days since the Unix epoch.
    #[inline]
    pub fn day(&self) -> i64 {
        self.minute.div_euclid(1440)
    }

    /// Whether `self` and `other` differ at most in their minute within the
    /// day and their exchange: then they are in the same row of every table
    /// at day grain without the exchange.
    #[inline]
    pub fn same_group(&self, other: &RowKey) -> bool {
        let group = |k: &RowKey| RowKey {
            minute: k.day(),
            exchange: OsName::EMPTY,
            price_bucket: 0,
            bid_bucket: 0,
            delay_bucket: 0,
            ..*k
        };
        group(self) == group(other)
    }
}

impl Ord for RowKey {
    fn cmp(&self, other: &RowKey) -> Ordering {
        self.day()
            .cmp(&other.day())
            .then_with(|| (self.event_type as u8).cmp(&(other.event_type as u8)))
            .then_with(|| self.country.cmp(&other.country))
            .then_with(|| self.os.as_bytes().cmp(other.os.as_bytes()))
            .then_with(|| self.campaign.cmp(&other.campaign))
            .then_with(|| self.advertiser.cmp(&other.advertiser))
            .then_with(|| self.price_bucket.cmp(&other.price_bucket))
            .then_with(|| self.bid_bucket.cmp(&other.bid_bucket))
            .then_with(|| self.delay_bucket.cmp(&other.delay_bucket))
            .then_with(|| self.minute.cmp(&other.minute))
            .then_with(|| self.exchange.as_bytes().cmp(other.exchange.as_bytes()))
    }
}

impl PartialOrd for RowKey {
    fn partial_cmp(&self, other: &RowKey) -> Option<Ordering> {
        Some(self.cmp(other))
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

/// One row: its key and measures.
pub type Row = (RowKey, Counters);

/// The events of `rows`: those of the rollups' rows (a price
/// distribution's rows count the same events again).
pub fn events_of<'a>(rows: impl IntoIterator<Item = &'a Row>) -> u64 {
    rows.into_iter().filter(|r| r.0.kind() == 0).map(|r| r.1.events).sum()
}

/// Rows to add to the warehouse.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    /// One entry per minute bucket and dimension combination, sorted by key
    /// ([`RowKey`]'s order), each key once.
    pub rows: Vec<Row>,
    /// Total events in `rows` (the sum of `events`).
    pub events: u64,
    /// Raw rows for `events_sample`.
    pub raw: Vec<RawRow>,
    /// The last `seq` of every (publisher, topic) that moved while these
    /// rows were gathered (the sink keeps them apart from the rows: see
    /// [`crate::marks`]).
    pub marks: Vec<Mark>,
    /// A fleet member's partitions taken by the thread since its last
    /// delta: their marks start again from `seeds` (committed when they
    /// were taken), before `marks` (see [`crate::marks::SeqMarks::restart`]).
    /// Carried here, in order with the marks, rather than read from the
    /// assignment by the sink: marks of an earlier ownership it still held
    /// would otherwise be written back over newer ones.
    pub restart: Vec<u32>,
    /// The committed marks of `restart`.
    pub seeds: Vec<Mark>,
    /// Messages the thread's `seq` trackers found lost since its last
    /// delta: counted once a batch carrying their marks commits, so that a
    /// gap whose marks never commit (a kill, a fence) is counted once, by
    /// whoever next starts from the committed marks.
    pub lost: u64,
    /// The same, per publisher and topic.
    pub gaps: Vec<crate::seq::Gap>,
    /// A fleet member's: how many times it had been fenced when the thread
    /// gathered this (the sink drops what was gathered before a fence:
    /// the new owners count it from the committed marks).
    pub fences: u64,
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
    /// A delta of `rows` in any order, keys possibly repeated (they are added up).
    pub fn from_rows(mut rows: Vec<Row>, raw: Vec<RawRow>) -> Delta {
        rows.sort_unstable_by_key(|r| r.0);
        let rows = add_up_adjacent(rows);
        Delta { events: events_of(&rows), rows, raw, ..Delta::default() }
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
            && self.raw.is_empty()
            && self.marks.is_empty()
            && self.restart.is_empty()
            && self.lost == 0
            && self.gaps.is_empty()
    }

    /// Takes at most `max_rows` rows (the first in key order) and `max_raw`
    /// raw rows out of `self` into a delta of their own (all of it when it is
    /// small enough). The marks, `lost` and `gaps` stay in `self`.
    pub fn split_off(&mut self, max_rows: usize, max_raw: usize) -> Delta {
        if self.rows.len() <= max_rows && self.raw.len() <= max_raw {
            let (marks, lost, gaps) = (std::mem::take(&mut self.marks), self.lost, std::mem::take(&mut self.gaps));
            return std::mem::replace(self, Delta { marks, lost, gaps, ..Delta::default() });
        }
        let rest = self.rows.split_off(self.rows.len().min(max_rows));
        let rows = std::mem::replace(&mut self.rows, rest);
        let events = events_of(&rows);
        self.events -= events;
        let raw_taken = self.raw.len().min(max_raw);
        Delta { rows, events, raw: self.raw.drain(..raw_taken).collect(), ..Delta::default() }
    }

    /// Merges `other` into `self`: rows under the `max_rows` cap, raw rows up
    /// to `max_raw` (dropping the excess). Rows of keys already held are
    /// added; once `max_rows` keys are held, a new key is folded (see
    /// [`RowKey::folded`]) so memory stays bounded while totals per bucket and
    /// type stay exact. Both deltas are sorted, so this is one linear pass.
    /// `other.restart` must have been taken in already: it comes before
    /// the marks of both.
    pub fn merge(&mut self, other: Delta, max_rows: usize, max_raw: usize) -> MergeLoss {
        debug_assert!(other.restart.is_empty() && other.seeds.is_empty(), "a restart is taken in before merging");
        let mut loss = MergeLoss::default();
        if self.is_empty() {
            *self = other;
        } else {
            let mut held = self.rows.len();
            let mut folded = Vec::new();
            let mut admit = |row: &Row| {
                if held < max_rows {
                    held += 1;
                    return true;
                }
                if row.0.kind() == 0 {
                    loss.folded_events += row.1.events;
                }
                folded.push((row.0.folded(), row.1));
                false
            };
            let rows = merge_sorted(std::mem::take(&mut self.rows), other.rows, &mut admit);
            self.rows = if folded.is_empty() {
                rows
            } else {
                // Folded keys are few (one per bucket, type and country) and
                // always kept, whatever the cap.
                folded.sort_unstable_by_key(|r| r.0);
                merge_sorted(rows, add_up_adjacent(folded), &mut |_| true)
            };
            self.events += other.events;
            self.raw.extend(other.raw);
            self.marks.extend(other.marks);
            self.lost += other.lost;
            self.gaps.extend(other.gaps);
        }
        if self.raw.len() > max_raw {
            loss.raw_dropped = (self.raw.len() - max_raw) as u64;
            self.raw.truncate(max_raw);
        }
        loss
    }
}

/// Merges two runs of rows sorted by key, each key once per run, adding the
/// measures of keys in both. A key only in `b` is kept when `admit` says so.
pub(super) fn merge_sorted(a: Vec<Row>, b: Vec<Row>, admit: &mut impl FnMut(&Row) -> bool) -> Vec<Row> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.0.cmp(&y.0),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => return out,
        };
        match order {
            Ordering::Less => out.push(a.next().expect("peeked")),
            Ordering::Greater => {
                let row = b.next().expect("peeked");
                if admit(&row) {
                    out.push(row);
                }
            }
            Ordering::Equal => {
                let (key, mut sum) = a.next().expect("peeked");
                sum.add(&b.next().expect("peeked").1);
                out.push((key, sum));
            }
        }
    }
}

/// Rows sorted by key, with repeats of a key (adjacent) added into one row.
pub fn add_up_adjacent(rows: impl IntoIterator<Item = Row>) -> Vec<Row> {
    let rows = rows.into_iter();
    let mut out: Vec<Row> = Vec::with_capacity(rows.size_hint().0);
    for (key, counters) in rows {
        match out.last_mut() {
            Some((last, sum)) if *last == key => sum.add(&counters),
            _ => out.push((key, counters)),
        }
    }
    out
}
