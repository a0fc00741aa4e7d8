//! A batch as it is written: a delta's rows split into parts with disjoint
//! hour keys, each part holding its minute rows and the same rows grouped by
//! hour, both in one fixed key order.
//!
//! The order is the hour, then the dimensions, then the minute, which makes a
//! part's minute rows of one hour key adjacent: the hour rows come out of
//! one pass, already in order, without a hash table. Any fixed order would
//! do for locking (every instance runs the same code); this one is cheap.

use crate::aggregate::{Counters, Delta, RawRow, RowKey};
use std::cmp::Ordering;
use std::hash::BuildHasher;

/// One staged row.
pub type Row = (RowKey, Counters);

/// What one batch (or one part of it) writes: its minute transaction writes
/// `minute` and `raw`, its hour transaction `hour`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// `rollup_minute` rows, in key order.
    pub minute: Vec<Row>,
    /// `rollup_hour` rows (keyed by the hour's first minute), in key order.
    pub hour: Vec<Row>,
    /// Raw rows for `events_sample`.
    pub raw: Vec<RawRow>,
    /// Events in `minute` (and so in `hour`).
    pub events: u64,
}

/// A key with its minute replaced by its hour.
fn hour_key(key: &RowKey) -> RowKey {
    RowKey { minute: key.minute.div_euclid(60), ..*key }
}

/// Hour, dimensions, minute.
fn order(a: &RowKey, b: &RowKey) -> Ordering {
    a.minute
        .div_euclid(60)
        .cmp(&b.minute.div_euclid(60))
        .then_with(|| a.event_type.cmp(&b.event_type))
        .then_with(|| a.country.cmp(&b.country))
        .then_with(|| a.os.cmp(&b.os))
        .then_with(|| a.campaign.cmp(&b.campaign))
        .then_with(|| a.advertiser.cmp(&b.advertiser))
        .then_with(|| a.minute.cmp(&b.minute))
}

impl Batch {
    /// Splits `delta` into at most `parts` batches whose hour keys (a row's
    /// key without its minute within the hour) are disjoint, so that parts
    /// written in parallel never touch the same row of either table. Raw rows
    /// go with the first part; empty parts are left out.
    pub fn parts(delta: Delta, parts: usize) -> Vec<Batch> {
        let parts = parts.max(1);
        let mut out: Vec<Batch> = (0..parts).map(|_| Batch::default()).collect();
        let per_part = delta.rows.len() / parts + 1;
        for part in &mut out {
            part.minute.reserve(per_part);
        }
        for (key, counters) in delta.rows {
            let i = if parts == 1 {
                0
            } else {
                (rustc_hash::FxBuildHasher.hash_one(hour_key(&key)) % parts as u64) as usize
            };
            out[i].events += counters.events;
            out[i].minute.push((key, counters));
        }
        out[0].raw = delta.raw;
        out.retain(|b| !b.minute.is_empty() || !b.raw.is_empty());
        for part in &mut out {
            part.minute.sort_unstable_by(|a, b| order(&a.0, &b.0));
            part.hour = group_by_hour(&part.minute);
        }
        out
    }
}

/// The hour rows of `minute` rows sorted by [`order`].
fn group_by_hour(minute: &[Row]) -> Vec<Row> {
    let mut hour: Vec<Row> = Vec::with_capacity(minute.len());
    for (key, counters) in minute {
        let key = RowKey { minute: key.minute.div_euclid(60) * 60, ..*key };
        match hour.last_mut() {
            Some((last, sum)) if *last == key => sum.add(counters),
            _ => hour.push((key, *counters)),
        }
    }
    hour
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregateConfig, Aggregator, Outcome};
    use crate::decode::Event;
    use crate::wire::EventType;
    use std::collections::{BTreeMap, HashMap};

    fn delta() -> Delta {
        let mut agg = Aggregator::new(AggregateConfig::default());
        let now = 1_764_180_000_000;
        for i in 0..5_000u32 {
            let e = Event {
                event_type: EventType::ALL[(i % 8) as usize],
                partition: 0,
                txn: b"t",
                ts_ms: now - i64::from(i % 180) * 60_000, // three hours of minutes
                publisher: None,
                seq: None,
                country: Some(["BR", "US"][(i % 2) as usize]),
                os: Some("android"),
                campaign: i % 97,
                advertiser: i % 97 % 40,
                exchange: None,
                price: Some(i64::from(i)),
                revenue: None,
                attributed: None,
                name: None,
            };
            assert_eq!(agg.record(&e, now), Outcome::Accepted);
        }
        agg.drain()
    }

    #[test]
    fn parts_have_disjoint_hour_keys_every_row_once_and_exact_hour_sums() {
        let whole = delta();
        let parts = Batch::parts(whole.clone(), 3);
        assert_eq!(parts.len(), 3, "5 000 events over 97 campaigns fill three parts");
        assert_eq!(parts.iter().map(|p| p.events).sum::<u64>(), whole.events);
        assert_eq!(parts.iter().map(|p| p.minute.len()).sum::<usize>(), whole.rows.len());
        let mut owner = HashMap::new();
        let mut expected_hours: BTreeMap<RowKey, Counters> = BTreeMap::new();
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(part.events, part.minute.iter().map(|r| r.1.events).sum::<u64>());
            assert!(part.minute.windows(2).all(|w| order(&w[0].0, &w[1].0) == Ordering::Less), "minute rows in order");
            for (k, c) in &part.minute {
                assert_eq!(whole.rows.get(k), Some(c));
                assert_eq!(*owner.entry(hour_key(k)).or_insert(i), i, "an hour key in two parts: {k:?}");
                let h = RowKey { minute: k.minute.div_euclid(60) * 60, ..*k };
                expected_hours.entry(h).or_default().add(c);
            }
            assert!(part.hour.windows(2).all(|w| order(&w[0].0, &w[1].0) == Ordering::Less), "hour rows in order");
        }
        let hours: BTreeMap<RowKey, Counters> = parts.iter().flat_map(|p| p.hour.iter().copied()).collect();
        assert_eq!(hours.len(), parts.iter().map(|p| p.hour.len()).sum::<usize>(), "an hour row in two parts");
        assert_eq!(hours, expected_hours);
    }

    #[test]
    fn one_part_keeps_everything_and_an_empty_delta_gives_no_batch() {
        let mut whole = delta();
        let one = Batch::parts(whole.clone(), 1);
        assert_eq!(one.len(), 1);
        assert_eq!((one[0].minute.len(), one[0].events), (whole.rows.len(), whole.events));
        whole.rows.clear();
        whole.events = 0;
        assert!(Batch::parts(whole, 4).is_empty(), "nothing to write, no batch");
    }
}
