//! The whole per-message path exactly as an ingest thread runs it
//! (`HotPath::process`: size limit, decode, seq tracking, partition check,
//! sampling, admission, aggregation, raw rows), then drain and merge, with
//! tiny caps so that every folding path is exercised. The sample is below 1
//! (auctions lower still) and a subset is taken, so partition checks and refined partitions run.
#![no_main]

use bid_logger_core::aggregate::{AggregateConfig, Delta};
use bid_logger_core::hot_path::{HotPath, HotPathConfig};
use bid_logger_core::sample::{Rate, TypeRates};
use bid_logger_core::wire::EventType;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 24).min(rest.len());
    let (topic, payload) = rest.split_at(n);
    let takes_everything = n % 2 == 0;
    let mut hot = HotPath::new(HotPathConfig {
        partition_count: 64,
        // (sampling, auctions at a rate of their own)
        sample: if takes_everything {
            Rate::ALL.into()
        } else {
            TypeRates::from(Rate::from_ppm(300_000)).with(EventType::Auction, Rate::from_ppm(20_000))
        },
        raw_sample: "0.5".parse().unwrap(),
        takes_every_partition: takes_everything,
        max_event_size: 512,
        max_seq_jump: 100,
        aggregate: AggregateConfig { max_live_keys: 2, max_os_values: 1, max_raw_rows: 1, ..Default::default() },
    });
    let now = 1_764_180_000_000;
    for _ in 0..3 {
        hot.process(topic, payload, now);
    }
    let d = hot.aggregator.drain();
    let total: u64 = d.rows.iter().map(|(_, c)| c.events).sum();
    assert_eq!(total, d.events);
    let mut merged = Delta::default();
    merged.merge(d.clone(), 1, 1);
    merged.merge(d, 1, 1);
    assert_eq!(merged.rows.iter().map(|(_, c)| c.events).sum::<u64>(), merged.events);
});
