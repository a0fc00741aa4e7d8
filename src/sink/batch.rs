//! A batch as it is written: a delta's fine rows split into parts, each
//! part holding every rollup table's rows of its events, in key order.
//!
//! A [`Delta`] is sorted in [`RowKey`]'s order (day, the dimensions other
//! than the exchange, minute, exchange), so the rows of one
//! `rollup_minute`/`rollup_hour`/`rollup_day` key are adjacent: parts are
//! cut where [`RowKey::same_group`] changes, so a fold finds a key's rows
//! of one batch in one part. Parts written in parallel only append (live
//! rows, log rows), so they never wait for each other's row locks.

use crate::db::tables::{self, RollupTable};
#[cfg(doc)]
use bid_logger_core::aggregate::RowKey;
use bid_logger_core::aggregate::{Delta, RawRow, Row};

/// What one batch (or one part of it) writes, in one transaction.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Each table's rows (in the order of the configured tables), in key
    /// order, each key once.
    pub tables: Vec<Vec<Row>>,
    /// Per table, events left out because their bucket is past its retention.
    pub expired: Vec<u64>,
    /// Raw rows for `events_sample`.
    pub raw: Vec<RawRow>,
    /// Events in the part.
    pub events: u64,
}

impl Batch {
    /// Splits `delta` into at most `parts` batches of about equal size whose
    /// fine rows differ in [`RowKey::same_group`] across parts, and projects
    /// each onto every table (leaving out buckets past a table's retention at
    /// `now_ms`). Raw rows go with the first part; empty parts are left out.
    pub fn parts(delta: Delta, parts: usize, tables: &[RollupTable], now_ms: i64) -> Vec<Batch> {
        let Delta { rows, raw, .. } = delta;
        let n = rows.len();
        let mut cuts: Vec<usize> = (1..parts.max(1))
            .map(|i| {
                let mut cut = n * i / parts;
                while cut > 0 && cut < n && rows[cut - 1].0.same_group(&rows[cut].0) {
                    cut += 1;
                }
                cut
            })
            .collect();
        cuts.push(n);
        cuts.dedup();
        let mut out = Vec::with_capacity(cuts.len());
        let mut from = 0;
        for cut in cuts {
            let fine = &rows[from..cut];
            from = cut;
            out.push(Batch::of(fine, tables, now_ms));
        }
        if out.is_empty() {
            out.push(Batch::of(&[], tables, now_ms));
        }
        out[0].raw = raw;
        out.retain(|b| b.events > 0 || !b.raw.is_empty() || b.rows() > 0);
        out
    }

    /// A batch with no rows (it records marks only).
    pub fn empty(tables: &[RollupTable], now_ms: i64) -> Batch {
        Batch::of(&[], tables, now_ms)
    }

    /// Every table's rows of `fine`.
    fn of(fine: &[Row], tables: &[RollupTable], now_ms: i64) -> Batch {
        let mut batch = Batch {
            events: bid_logger_core::aggregate::events_of(fine),
            tables: Vec::with_capacity(tables.len()),
            expired: Vec::with_capacity(tables.len()),
            raw: Vec::new(),
        };
        for (t, table) in tables.iter().enumerate() {
            if table.fed_by.is_some() {
                // fed from another table's consumption
                batch.tables.push(Vec::new());
                batch.expired.push(0);
                continue;
            }
            let oldest = tables::projection_oldest_minute(tables, t, now_ms);
            let (rows, expired) = table.shape.project(fine, oldest);
            batch.tables.push(rows);
            batch.expired.push(expired);
        }
        // What a chain's first table left out is past every retention of the
        // chain: the fed tables count it too.
        for t in 0..tables.len() {
            batch.expired[t] = batch.expired[tables::batch_source(tables, t)];
        }
        batch
    }

    /// Rows over all tables.
    pub fn rows(&self) -> usize {
        self.tables.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tables::default_tables;
    use bid_logger_core::aggregate::{AggregateConfig, Aggregator, Counters, Outcome, RowKey};
    use bid_logger_core::decode::Event;
    use bid_logger_core::wire::EventType;
    use std::collections::{BTreeMap, HashMap};
    use std::time::Duration;

    const NOW: i64 = 1_764_180_000_000;

    fn delta() -> Delta {
        let mut agg = Aggregator::new(AggregateConfig::default());
        for i in 0..5_000u32 {
            let e = Event {
                event_type: EventType::ALL[(i % 8) as usize],
                partition: 0,
                txn: b"t",
                ts_ms: NOW - i64::from(i % 1800) * 60_000, // thirty hours of minutes
                publisher: None,
                seq: None,
                country: Some(["BR", "US"][(i % 2) as usize]),
                os: Some("android"),
                campaign: i % 97,
                advertiser: i % 97 % 40,
                exchange: Some(["unity", "applovin", "mopub"][(i % 3) as usize]),
                price: Some(i64::from(i)),
                revenue: None,
                attributed: None,
                name: None,
            };
            assert_eq!(agg.record(&e, NOW), Outcome::Accepted);
        }
        agg.drain()
    }

    #[test]
    fn parts_hold_every_event_once_in_every_table_with_disjoint_keys_where_the_campaign_is_kept() {
        let tables = default_tables(Duration::from_secs(1));
        let whole = delta();
        let parts = Batch::parts(whole.clone(), 3, &tables, NOW);
        assert_eq!(parts.len(), 3, "5 000 events over 97 campaigns fill three parts");
        assert_eq!(parts.iter().map(|p| p.events).sum::<u64>(), whole.events);
        let one = Batch::parts(whole.clone(), 1, &tables, NOW);
        assert_eq!(one.len(), 1);
        for (t, table) in tables.iter().enumerate() {
            let mut owner: HashMap<RowKey, usize> = HashMap::new();
            let mut sums: BTreeMap<RowKey, Counters> = BTreeMap::new();
            for (i, part) in parts.iter().enumerate() {
                let rows = &part.tables[t];
                assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "{}: rows in order, each once", table.name);
                for (k, c) in rows {
                    let first = *owner.entry(*k).or_insert(i);
                    if table.shape.dims.has(bid_logger_core::aggregate::Dimension::Campaign) {
                        assert_eq!(first, i, "{}: a key in two parts: {k:?}", table.name);
                    }
                    sums.entry(*k).or_default().add(c);
                }
            }
            let whole_table: BTreeMap<RowKey, Counters> = one[0].tables[t].iter().copied().collect();
            assert_eq!(sums, whole_table, "{}: parts add up to the whole", table.name);
            let events: u64 = whole_table.values().map(|c| c.events).sum();
            let expired: u64 = one[0].expired[t];
            if table.fed_by.is_some() {
                // fed from another table's consumption: no rows of its own in a batch
                assert_eq!((events, expired), (0, one[0].expired[tables::batch_source(&tables, t)]), "{}", table.name);
            } else {
                assert_eq!(events + expired, whole.events, "{}", table.name);
            }
        }
    }

    #[test]
    fn a_feeding_table_keeps_what_the_table_it_feeds_keeps() {
        let mut tables = default_tables(Duration::from_secs(1));
        // rollup_minute and rollup_hour: one hour; rollup_day: forever
        tables[0].retention = Some(Duration::from_secs(3_600));
        tables[1].retention = Some(Duration::from_secs(3_600));
        let whole = delta();
        let batch = &Batch::parts(whole.clone(), 1, &tables, NOW)[0];
        let minute: u64 = batch.tables[0].iter().map(|r| r.1.events).sum();
        assert_eq!((minute, batch.expired[0]), (whole.events, 0), "rollup_day needs every bucket, through rollup_hour");
        tables[2].retention = Some(Duration::from_secs(86_400)); // now rollup_day keeps one day
        let batch = &Batch::parts(whole.clone(), 1, &tables, NOW)[0];
        let oldest = (NOW - 86_400_000).div_euclid(60_000);
        let kept: u64 = whole.rows.iter().filter(|r| r.0.minute >= oldest).map(|r| r.1.events).sum();
        let minute: u64 = batch.tables[0].iter().map(|r| r.1.events).sum();
        assert!(kept < whole.events, "some events are older than a day");
        assert_eq!((minute, batch.expired[0]), (kept, whole.events - kept));
        assert_eq!(batch.expired[1], whole.events - kept, "what none keeps is counted for each");
        assert_eq!(batch.expired[2], whole.events - kept, "what none keeps is counted for each");
    }

    #[test]
    fn buckets_past_a_tables_retention_are_left_out_and_counted() {
        let mut tables = default_tables(Duration::from_secs(1));
        tables[0].retention = Some(Duration::from_secs(86_400));
        let whole = delta();
        let kept = |batch: &Batch| -> u64 { batch.tables[0].iter().map(|r| r.1.events).sum() };
        // rollup_hour, fed from rollup_minute's folds, keeps them: the
        // batch carries them for it (the fold leaves them out of rollup_minute)
        let batch = &Batch::parts(whole.clone(), 1, &tables, NOW)[0];
        assert_eq!((kept(batch), batch.expired[0]), (whole.events, 0));
        // once no table of the chain keeps them, the batch leaves them out
        tables[1].retention = Some(Duration::from_secs(86_400));
        tables[2].retention = Some(Duration::from_secs(86_400));
        let batch = &Batch::parts(whole.clone(), 1, &tables, NOW)[0];
        let oldest = (NOW - 86_400_000).div_euclid(60_000);
        let expected: u64 = whole.rows.iter().filter(|r| r.0.minute >= oldest).map(|r| r.1.events).sum();
        assert!(expected < whole.events, "some events are older than a day");
        assert_eq!((kept(batch), batch.expired[0]), (expected, whole.events - expected));
        assert_eq!(batch.expired[1], batch.expired[0], "and counts them for every table of the chain");
    }

    #[test]
    fn an_empty_delta_gives_no_batch() {
        let tables = default_tables(Duration::from_secs(1));
        assert!(Batch::parts(Delta::default(), 4, &tables, NOW).is_empty());
    }
}
