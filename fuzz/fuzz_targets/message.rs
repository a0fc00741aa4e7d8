//! The whole per-message path: decode, sample, admit, aggregate, raw row,
//! drain and merge, with tiny caps so that every folding path is exercised.
#![no_main]

use bid_logger::aggregate::{AggregateConfig, Aggregator, Delta, Outcome};
use bid_logger::sample::Sampler;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 24).min(rest.len());
    let (topic, payload) = rest.split_at(n);
    let Ok(ev) = bid_logger::decode::decode(topic, payload, 64) else { return };
    let sampler = Sampler::new("0.3".parse().unwrap(), 64);
    let mut agg = Aggregator::new(AggregateConfig { max_live_keys: 2, max_os_values: 1, max_raw_rows: 1, ..Default::default() });
    let now = 1_764_180_000_000;
    for _ in 0..3 {
        if agg.admit(ev.ts_ms, now) == Outcome::Accepted {
            agg.push_raw(&ev, now);
            if sampler.keep_in(ev.partition, ev.txn) == sampler.keep(ev.txn) {
                agg.record_admitted(&ev);
            } else {
                panic!("keep_in and keep disagree for the publisher's own partition");
            }
        }
    }
    let d = agg.drain();
    let total: u64 = d.rows.values().map(|c| c.events).sum();
    assert_eq!(total, d.events);
    let mut merged = Delta::default();
    merged.merge(d.clone(), 1, 1);
    merged.merge(d, 1, 1);
    assert_eq!(merged.rows.values().map(|c| c.events).sum::<u64>(), merged.events);
});
