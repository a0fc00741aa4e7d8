//! A batch as it is written: a delta's rows split into parts with disjoint
//! hour keys, each part holding its minute rows and the same rows grouped by
//! hour, both in key order.
//!
//! A [`Delta`] is already sorted in [`RowKey`]'s order (the hour, then the
//! dimensions, then the minute), which makes a part's minute rows of one
//! hour key adjacent: parts are cut at hour-row boundaries, and the hour rows
//! come out of one pass, already in order, without hashing or sorting.

use bid_logger_core::aggregate::{add_up_adjacent, Delta, RawRow, Row, RowKey};

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

impl Batch {
    /// Splits `delta` into at most `parts` batches of about equal size whose
    /// hour keys (a row's key without its minute within the hour) are
    /// disjoint, so that parts written in parallel never touch the same row
    /// of either table: each part is a run of the sorted rows, cut where the
    /// hour key changes. Raw rows go with the first part; empty parts are
    /// left out.
    pub fn parts(delta: Delta, parts: usize) -> Vec<Batch> {
        let Delta { mut rows, raw, .. } = delta;
        let n = rows.len();
        let mut cuts: Vec<usize> = (1..parts.max(1))
            .map(|i| {
                let mut cut = n * i / parts;
                while cut > 0 && cut < n && rows[cut - 1].0.same_hour_row(&rows[cut].0) {
                    cut += 1;
                }
                cut
            })
            .collect();
        cuts.dedup();
        let mut runs = Vec::with_capacity(cuts.len() + 1);
        for &cut in cuts.iter().rev() {
            runs.push(rows.split_off(cut));
        }
        runs.push(rows);
        runs.reverse();
        let mut out: Vec<Batch> = runs
            .into_iter()
            .map(|minute| Batch {
                events: minute.iter().map(|r| r.1.events).sum(),
                hour: group_by_hour(&minute),
                minute,
                raw: Vec::new(),
            })
            .collect();
        out[0].raw = raw;
        out.retain(|b| !b.minute.is_empty() || !b.raw.is_empty());
        out
    }
}

/// The hour rows of `minute` rows sorted by key.
fn group_by_hour(minute: &[Row]) -> Vec<Row> {
    add_up_adjacent(minute.iter().map(|(key, counters)| (RowKey { minute: key.hour() * 60, ..*key }, *counters)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bid_logger_core::aggregate::{AggregateConfig, Aggregator, Counters, Outcome};
    use bid_logger_core::decode::Event;
    use bid_logger_core::wire::EventType;
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
        let whole_rows: HashMap<RowKey, Counters> = whole.rows.iter().copied().collect();
        let mut owner = HashMap::new();
        let mut expected_hours: BTreeMap<RowKey, Counters> = BTreeMap::new();
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(part.events, part.minute.iter().map(|r| r.1.events).sum::<u64>());
            assert!(part.minute.windows(2).all(|w| w[0].0 < w[1].0), "minute rows in order");
            for (k, c) in &part.minute {
                assert_eq!(whole_rows.get(k), Some(c));
                let hour_key = RowKey { minute: k.hour(), ..*k };
                assert_eq!(*owner.entry(hour_key).or_insert(i), i, "an hour key in two parts: {k:?}");
                let h = RowKey { minute: k.minute.div_euclid(60) * 60, ..*k };
                expected_hours.entry(h).or_default().add(c);
            }
            assert!(part.hour.windows(2).all(|w| w[0].0 < w[1].0), "hour rows in order");
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
