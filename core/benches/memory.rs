//! Bytes of resident memory per live rollup key, measured at 1 million live
//! keys (target: at most 200), and per transaction waiting in each pairing
//! (a bid for its outcome, an impression for its clicks) at 1 million
//! waiting. Run with `cargo bench --bench memory`; under `cargo test` it
//! runs a small smoke version.

use bid_logger_core::aggregate::{AggregateConfig, Aggregator, Dimension, Dimensions, PairingConfig};
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
    drop((agg, delta));
    pairing(keys, now);
}

/// Resident bytes per transaction waiting: `keys` bids waiting for their
/// outcome, then as many impressions waiting for their clicks (each its
/// own transaction, as at a steady rate: R a second for a window of W
/// seconds holds R × W).
fn pairing(keys: u32, now: i64) {
    let pairing = PairingConfig {
        landscape: Some(Dimensions::of(&[Dimension::Exchange, Dimension::BidPrice])),
        timing: Some(Dimensions::of(&[Dimension::Exchange, Dimension::Delay])),
        window_ms: 60_000,
        max_pending: keys as usize,
    };
    let mut agg = Aggregator::new(AggregateConfig { pairing: Some(pairing), ..Default::default() });
    for (i, event_type) in [(0, EventType::Bid), (1, EventType::Impression)] {
        let before = rss_bytes();
        for n in 0..keys {
            let txn = format!("9b2f6c1e-3a4d-4e5f-8a9b-{n:012}");
            let ev = Event {
                event_type,
                partition: 0,
                txn: txn.as_bytes(),
                ts_ms: now,
                publisher: None,
                seq: None,
                country: Some("US"),
                os: Some("android"),
                campaign: n % 1000,
                advertiser: 7,
                exchange: Some("exchange-with-a-long-name"),
                price: Some(1_000 + i64::from(n % 5000)),
                revenue: None,
                attributed: None,
                name: None,
            };
            agg.record(&ev, now);
        }
        agg.drain(); // (the bids' landscape rows: not what waits)
        let waiting = if i == 0 { agg.waiting() } else { agg.clicks_waiting() };
        assert_eq!(waiting, keys as usize);
        let per = (rss_bytes() - before) as f64 / f64::from(keys);
        let what = if i == 0 { "bids waiting for their outcome" } else { "impressions waiting for clicks" };
        println!("memory/pairing: {keys} {what}, {per:.1} bytes each (per 1 a second of a 1 s window)");
    }
}
