//! Bytes of resident memory per live rollup key, measured at 1 million live
//! keys (target: at most 200). Run with `cargo bench --bench memory`; under
//! `cargo test` it runs a small smoke version.

use bid_logger_core::aggregate::{AggregateConfig, Aggregator};
use bid_logger_core::decode::Event;
use bid_logger_core::wire::EventType;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

fn main() {
    let keys: u32 = if std::env::args().any(|a| a == "--bench") { 1_000_000 } else { 10_000 };
    let now = 1_764_180_000_000i64;
    let before = rss_bytes();
    let mut agg = Aggregator::new(AggregateConfig { max_live_keys: keys as usize * 2, ..Default::default() });
    for i in 0..keys {
        let ev = Event {
            event_type: EventType::Bid,
            partition: 0,
            txn: b"t",
            ts_ms: now - i64::from(i % 60) * 60_000,
            publisher: None,
            seq: None,
            country: Some("US"),
            os: Some("android"),
            campaign: i,
            advertiser: i % 97,
            exchange: None,
            price: Some(1),
            revenue: None,
            attributed: None,
            name: None,
        };
        agg.record(&ev, now);
    }
    assert_eq!(agg.live_keys(), keys as usize);
    let after = rss_bytes();
    let per_key = (after - before) as f64 / f64::from(keys);
    println!(
        "memory/live_keys: {keys} keys, {:.1} MiB, {per_key:.1} bytes per live key",
        (after - before) as f64 / 1048576.0
    );
    let delta = agg.drain();
    let after_drain = rss_bytes();
    println!(
        "memory/drained_delta: {} rows, {:.1} bytes per row (delta plus the table's retained capacity)",
        delta.rows.len(),
        (after_drain - before) as f64 / f64::from(keys)
    );
}
