//! Rollup tables as shapes: a grain and a set of dimensions.
//!
//! Ingest keeps one fine-grained row per minute and combination of every
//! dimension ([`RowKey`]); each rollup table's rows are those rows
//! projected onto its dimensions and coarsened to its grain, at flush time,
//! by [`Shape::project`]. All tables are therefore fed from the same events.

use super::delta::{Counters, OsName, Row, RowKey};
use rustc_hash::FxHashMap;
use std::fmt;

/// A table's bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grain {
    /// UTC minute.
    Minute,
    /// UTC hour.
    Hour,
    /// UTC day.
    Day,
}

impl Grain {
    /// Every grain, finest first.
    pub const ALL: [Grain; 3] = [Grain::Minute, Grain::Hour, Grain::Day];

    /// Minutes per bucket.
    pub fn minutes(self) -> i64 {
        match self {
            Grain::Minute => 1,
            Grain::Hour => 60,
            Grain::Day => 1440,
        }
    }

    /// Its name in the configuration (and PostgreSQL's `date_trunc` unit).
    pub fn as_str(self) -> &'static str {
        match self {
            Grain::Minute => "minute",
            Grain::Hour => "hour",
            Grain::Day => "day",
        }
    }

    /// The grain named `name`.
    pub fn parse(name: &str) -> Option<Grain> {
        Grain::ALL.into_iter().find(|g| g.as_str() == name)
    }

    /// The first minute of the bucket holding `minute`.
    #[inline]
    pub fn bucket(self, minute: i64) -> i64 {
        minute - minute.rem_euclid(self.minutes())
    }
}

impl fmt::Display for Grain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rollup dimension (besides `event_type`, which every table has).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dimension {
    /// `country`.
    Country,
    /// `os`.
    Os,
    /// `exchange`.
    Exchange,
    /// `campaign_id`.
    Campaign,
    /// `advertiser_id`.
    Advertiser,
    /// `price_bucket`: the logarithmic bucket of `price` (see
    /// [`super::price`]). A table with it is a price distribution: it holds
    /// the events that carry a positive price alone.
    Price,
    /// `bid_price_bucket`: the price bucket of the transaction's bid. A
    /// table with it is a bid landscape: each bid under its own price's
    /// bucket, each win or loss under its bid's.
    BidPrice,
    /// `delay_bucket`: the logarithmic bucket (the price buckets' scale, in
    /// milliseconds) of the time from a transaction's bid to its win or
    /// loss, or from its impression to a click. A table with it is a
    /// timing table: each paired win, loss or click under its delay's bucket.
    Delay,
}

impl Dimension {
    /// Every dimension, in column order.
    pub const ALL: [Dimension; 8] = [
        Dimension::Country,
        Dimension::Os,
        Dimension::Exchange,
        Dimension::Campaign,
        Dimension::Advertiser,
        Dimension::Price,
        Dimension::BidPrice,
        Dimension::Delay,
    ];

    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Country => "country",
            Dimension::Os => "os",
            Dimension::Exchange => "exchange",
            Dimension::Campaign => "campaign",
            Dimension::Advertiser => "advertiser",
            Dimension::Price => "price",
            Dimension::BidPrice => "bid_price",
            Dimension::Delay => "delay",
        }
    }

    /// Its column in the rollup tables.
    pub fn column(self) -> &'static str {
        match self {
            Dimension::Country => "country",
            Dimension::Os => "os",
            Dimension::Exchange => "exchange",
            Dimension::Campaign => "campaign_id",
            Dimension::Advertiser => "advertiser_id",
            Dimension::Price => "price_bucket",
            Dimension::BidPrice => "bid_price_bucket",
            Dimension::Delay => "delay_bucket",
        }
    }

    /// Whether the column is text (otherwise bigint).
    pub fn is_text(self) -> bool {
        matches!(self, Dimension::Country | Dimension::Os | Dimension::Exchange)
    }

    /// The dimension named `name`.
    pub fn parse(name: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Dimensions(u8);

impl Dimensions {
    /// Every dimension of the rollups (every one but [`Dimension::Price`]).
    pub const ALL: Dimensions = Dimensions(0b1_1111);

    /// The set of `dims`.
    pub fn of(dims: &[Dimension]) -> Dimensions {
        Dimensions(dims.iter().fold(0, |acc, d| acc | d.bit()))
    }

    /// Whether `d` is in the set.
    #[inline]
    pub fn has(self, d: Dimension) -> bool {
        self.0 & d.bit() != 0
    }

    /// The dimensions in column order.
    pub fn iter(self) -> impl Iterator<Item = Dimension> {
        Dimension::ALL.into_iter().filter(move |d| self.has(*d))
    }

    /// Whether these are a price distribution's (they hold [`Dimension::Price`]).
    #[inline]
    pub fn is_price(self) -> bool {
        self.has(Dimension::Price)
    }

    /// Whether these are a bid landscape's (they hold [`Dimension::BidPrice`]).
    #[inline]
    pub fn is_landscape(self) -> bool {
        self.has(Dimension::BidPrice)
    }

    /// Whether these are a timing table's (they hold [`Dimension::Delay`]).
    #[inline]
    pub fn is_timing(self) -> bool {
        self.has(Dimension::Delay)
    }

    /// The kind of rows a table of these dimensions takes (see [`RowKey::kind`]).
    #[inline]
    pub fn kind(self) -> u8 {
        if self.is_price() {
            1
        } else if self.is_landscape() {
            2
        } else if self.is_timing() {
            3
        } else {
            0
        }
    }
}

/// What a rollup table keeps of an event: its grain and dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Bucket size.
    pub grain: Grain,
    /// Dimensions kept.
    pub dims: Dimensions,
}

impl Shape {
    /// `key` in this table: bucket coarsened to the grain, dimensions the
    /// table does not have set to a constant (empty names, id 0), so that
    /// keys differing only in them become one.
    #[inline]
    pub fn key(&self, key: &RowKey) -> RowKey {
        let d = self.dims;
        RowKey {
            minute: self.grain.bucket(key.minute),
            event_type: key.event_type,
            country: if d.has(Dimension::Country) { key.country } else { *b"--" },
            os: if d.has(Dimension::Os) { key.os } else { OsName::EMPTY },
            exchange: if d.has(Dimension::Exchange) { key.exchange } else { OsName::EMPTY },
            campaign: if d.has(Dimension::Campaign) { key.campaign } else { 0 },
            advertiser: if d.has(Dimension::Advertiser) { key.advertiser } else { 0 },
            price_bucket: if d.has(Dimension::Price) { key.price_bucket } else { 0 },
            bid_bucket: if d.has(Dimension::BidPrice) { key.bid_bucket } else { 0 },
            delay_bucket: if d.has(Dimension::Delay) { key.delay_bucket } else { 0 },
        }
    }

    /// This table's rows of fine `rows` (sorted by key): each key once, in
    /// key order. Rows whose bucket starts before `oldest_minute` (past the
    /// table's retention) are left out; the second value counts their events.
    /// A price distribution takes the rows with a price bucket, a bid
    /// landscape those with a bid's bucket, a timing table those with a
    /// delay's bucket, every other table the rows without any.
    ///
    /// When the projection keeps the order (every table with the country,
    /// OS, campaign and advertiser: see [`RowKey`]), equal keys are adjacent
    /// and this is one pass; otherwise rows are added up in a hash map
    /// (such tables have few keys) and the result sorted.
    pub fn project(&self, rows: &[Row], oldest_minute: i64) -> (Vec<Row>, u64) {
        if self.keeps_order() {
            self.project_sorted(rows, oldest_minute)
        } else {
            self.project_hashed(rows, oldest_minute)
        }
    }

    /// Whether projecting keeps [`RowKey`]'s order: every dimension but the
    /// exchange is kept (only the minute and the exchange come after them in
    /// the order), and the exchange is either dropped or the grain is the
    /// minute (coarsening the minute while keeping the exchange, which comes
    /// after it, would put `(bucket, b)` before `(bucket, a)`).
    fn keeps_order(&self) -> bool {
        self.dims.kind() == 0
            && [Dimension::Country, Dimension::Os, Dimension::Campaign, Dimension::Advertiser]
                .into_iter()
                .all(|d| self.dims.has(d))
            && (!self.dims.has(Dimension::Exchange) || self.grain == Grain::Minute)
    }

    /// One pass: equal keys are adjacent.
    fn project_sorted(&self, rows: &[Row], oldest_minute: i64) -> (Vec<Row>, u64) {
        let mut skipped = 0;
        let mut out: Vec<Row> = Vec::with_capacity(rows.len() / 2);
        let kind = self.dims.kind();
        for (key, counters) in rows {
            if key.kind() != kind {
                continue;
            }
            let key = self.key(key);
            if key.minute < oldest_minute {
                skipped += counters.events;
                continue;
            }
            match out.last_mut() {
                Some((last, sum)) if *last == key => sum.add(counters),
                _ => out.push((key, *counters)),
            }
        }
        debug_assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "{self:?} keeps the order");
        (out, skipped)
    }

    /// Added up in a hash map (such tables have few keys), then sorted.
    fn project_hashed(&self, rows: &[Row], oldest_minute: i64) -> (Vec<Row>, u64) {
        let mut skipped = 0;
        let mut sums: FxHashMap<RowKey, Counters> = FxHashMap::default();
        let kind = self.dims.kind();
        for (key, counters) in rows {
            if key.kind() != kind {
                continue;
            }
            let key = self.key(key);
            if key.minute < oldest_minute {
                skipped += counters.events;
                continue;
            }
            sums.entry(key).or_default().add(counters);
        }
        let mut out: Vec<Row> = sums.into_iter().collect();
        out.sort_unstable_by_key(|r| r.0);
        (out, skipped)
    }
}
